"""The first model end to end: specs/transformer.arch against a hand-written Llama."""

from __future__ import annotations

from pathlib import Path

import torch

import archdsl
from tests.references import transformer as ref

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "transformer.arch"


def _weights(model: torch.nn.Module) -> ref.Weights:
    """Map the generated model's parameters onto the reference's, by module role."""
    layers = []
    for repeat in model.body.s0:
        block = repeat.s0
        norms = [m for m in block.children() if type(m).__name__ == "RMSNorm"]
        glu = next(m for m in block.children() if type(m).__name__ == "GLU")
        attn = block.mixer_attn
        layers.append(
            ref.LayerWeights(
                attn_norm=norms[0].weight,
                wq=attn.q_proj.weight,
                wk=attn.k_proj.weight,
                wv=attn.v_proj.weight,
                wo=attn.o_proj.weight,
                ffn_norm=norms[1].weight,
                w_gate=glu.gate.weight,
                w_up=glu.up.weight,
                w_down=glu.down.weight,
            )
        )
    return ref.Weights(
        embedding=model.embedding.tokens.weight,
        layers=layers,
        final_norm=model.head.norm.weight,
        lm_head=model.head.lm_head.weight,
    )


def _model(**overrides: int) -> torch.nn.Module:
    torch.manual_seed(0)
    params = dict(d_model=32, heads=4, layers=2, vocab=50)
    params.update(overrides)
    return archdsl.build(SPEC, **params).double()


def _perturb_norms(model: torch.nn.Module) -> None:
    """Norm weights start at 1; make them distinct so a mix-up would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
                del name


def test_logits_match_reference() -> None:
    model = _model()
    _perturb_norms(model)
    ids = torch.randint(0, 50, (2, 13))
    out = model(ids)
    expected = ref.forward(ids, _weights(model), heads=4)
    assert out.shape == (2, 13, 50)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_gradients_match_reference() -> None:
    model = _model()
    _perturb_norms(model)
    ids = torch.randint(0, 50, (2, 11))
    target = torch.randn(2, 11, 50, dtype=torch.float64)
    (model(ids) * target).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    (ref.forward(ids, _weights(model), heads=4) * target).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_reference_backend_agrees_with_torch_backend() -> None:
    torch.manual_seed(1)
    fast = archdsl.build(SPEC, d_model=32, heads=4, layers=2, vocab=50).double()
    slow = archdsl.build(
        SPEC, backend="reference", d_model=32, heads=4, layers=2, vocab=50
    ).double()
    slow.load_state_dict(fast.state_dict())
    ids = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(fast(ids), slow(ids), rtol=1e-10, atol=1e-10)


def test_trains_on_a_copy_task() -> None:
    """Loss on a small repeat-the-sequence task falls well below its start."""
    torch.manual_seed(0)
    model = archdsl.build(SPEC, d_model=32, heads=4, layers=2, vocab=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        half = torch.randint(1, 16, (16, 8))
        ids = torch.cat([half, half], dim=1)
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits[:, 8:].reshape(-1, 16), ids[:, 9:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_tied_head_shares_the_embedding() -> None:
    spec = archdsl.load(SPEC, d_model=16, heads=2, layers=1, vocab=20)
    text = SPEC.read_text().replace("tied = false", "tied = true")
    tied = archdsl.build(archdsl.loads(text, "tied.arch", d_model=16, heads=2, layers=1, vocab=20))
    untied = archdsl.build(spec)
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == 20 * 16
    ids = torch.randint(0, 20, (1, 5))
    assert tied(ids).shape == (1, 5, 20)
