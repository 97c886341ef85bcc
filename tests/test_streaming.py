"""Generation: a causal LM fed its tokens in pieces (`begin`, `extend`, `step`) gives
exactly the logits of one call on the whole sequence, for every causal spec in specs/
(small sizes, float64): one token at a time, and a prompt followed by single tokens and
a chunk. Specs streaming does not support are refused by `begin` with the reason.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch

import archdsl
from archdsl.runtime.streaming import Stream, unsupported_reason

ROOT = Path(__file__).resolve().parent.parent
SPECS = [s for s in sorted((ROOT / "specs").glob("*.arch")) if archdsl.load(s).ir.model is not None]
SMALL = dict(d_model=32, heads=2, layers=2, vocab=20)
SHORT = dict(chunk=4, segment=8)
STREAMED = [s for s in SPECS if unsupported_reason(archdsl.load(s).ir) is None]
REFUSED = [s for s in SPECS if s not in STREAMED]


def _model(spec: Path) -> torch.nn.Module:
    names = {p.name for p in archdsl.load(spec).ir.params}
    sizes = {**SMALL, **{k: v for k, v in SHORT.items() if k in names}}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return archdsl.build(spec, **sizes).double().eval()


@pytest.mark.parametrize("spec", STREAMED, ids=[s.stem for s in STREAMED])
def test_pieces_give_the_whole_sequence_logits(spec: Path) -> None:
    model = _model(spec)
    ids = torch.randint(0, 20, (2, 13))
    with torch.no_grad():
        whole = model(ids)
        stream = model.begin(2)
        one_by_one = torch.stack([model.step(ids[:, t], stream) for t in range(13)], dim=1)
        stream = model.begin(2)
        prompt = model.extend(ids[:, :6], stream)
        singles = [model.step(ids[:, t], stream) for t in (6, 7)]
        rest = model.extend(ids[:, 8:], stream)
    torch.testing.assert_close(one_by_one, whole, rtol=1e-7, atol=1e-9)
    pieces = torch.cat([prompt, torch.stack(singles, dim=1), rest], dim=1)
    torch.testing.assert_close(pieces, whole, rtol=1e-7, atol=1e-9)
    assert stream.length == 13


def test_every_causal_lm_spec_streams_but_the_named_exception() -> None:
    """The support list is what it claims: every causal LM streams, Titans MAC's
    segments included, except S4 with L = T (length-dependent)."""
    causal = {s.stem for s in SPECS if archdsl.load(s).ir.model.head.kind == "causal_lm"}
    assert {s.stem for s in STREAMED} == causal - {"s4"}
    assert "titans_mac" in {s.stem for s in STREAMED} and len(STREAMED) >= 24


@pytest.mark.parametrize("spec", REFUSED, ids=[s.stem for s in REFUSED])
def test_unsupported_models_are_refused_with_the_reason(spec: Path) -> None:
    model = _model(spec)
    with pytest.raises(ValueError, match="causal language model|max_len"):
        model.begin(1)


def test_s4_with_a_fixed_kernel_length_streams(tmp_path: Path) -> None:
    """S4 streams once its kernel length is fixed (``max_len``); without, the whole
    sequence's logits depend on its length, which is why it is refused."""
    text = (ROOT / "specs" / "s4.arch").read_text()
    assert "headdim = d_model / heads)" in text
    fixed = tmp_path / "s4_fixed.arch"
    fixed.write_text(
        text.replace("headdim = d_model / heads)", "headdim = d_model / heads, max_len = 16)")
    )
    assert unsupported_reason(archdsl.load(fixed).ir) is None
    test_pieces_give_the_whole_sequence_logits(fixed)
    # the refused one really differs in pieces (its stream made by hand past `begin`)
    model = _model(ROOT / "specs" / "s4.arch")
    ids = torch.randint(0, 20, (2, 13))
    with torch.no_grad():
        stream = Stream(2)
        stepped = torch.stack([model.step(ids[:, t], stream) for t in range(13)], dim=1)
        assert not torch.allclose(stepped, model(ids), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("spec", ["titans", "mamba", "titans_mac"])
def test_a_deep_copied_stream_branches(spec: str) -> None:
    """``copy.deepcopy(stream)`` continues independently: two continuations of one
    prompt each give their whole sequence's logits."""
    model = _model(ROOT / "specs" / f"{spec}.arch")
    prompt = torch.randint(0, 20, (2, 7))
    a, b = torch.randint(0, 20, (2, 5)), torch.randint(0, 20, (2, 5))
    with torch.no_grad():
        stream = model.begin(2)
        model.extend(prompt, stream)
        branch = copy.deepcopy(stream)
        got_a = model.extend(a, stream)
        got_b = model.extend(b, branch)
        want_a = model(torch.cat([prompt, a], dim=1))[:, 7:]
        want_b = model(torch.cat([prompt, b], dim=1))[:, 7:]
    torch.testing.assert_close(got_a, want_a, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(got_b, want_b, rtol=1e-7, atol=1e-9)


def test_an_empty_piece_changes_nothing() -> None:
    model = _model(ROOT / "specs" / "mamba.arch")
    ids = torch.randint(0, 20, (2, 5))
    with torch.no_grad():
        stream = model.begin(2)
        empty = model.extend(ids[:, :0], stream)
        got = model.extend(ids, stream)
        want = model(ids)
    assert empty.shape == (2, 0, 20) and stream.length == 5
    torch.testing.assert_close(got, want)


def test_a_wrong_batch_or_another_models_stream_is_refused() -> None:
    model = _model(ROOT / "specs" / "mamba2.arch")
    stream = model.begin(2)
    with pytest.raises(ValueError, match="batch = 2"):
        model.extend(torch.zeros(3, 4, dtype=torch.long), stream)
    with pytest.raises(ValueError, match="another model"):
        _model(ROOT / "specs" / "mamba2.arch").extend(torch.zeros(2, 4, dtype=torch.long), stream)


def test_token_shift_and_short_conv_ops_continue(tmp_path: Path) -> None:
    """The two sequence ops outside the mixers, in a spec of their own (no spec in specs/
    uses token_shift)."""
    spec = tmp_path / "ops.arch"
    spec.write_text(
        "arch ops(d_model = 8, heads = 2, layers = 2, vocab = 20)\n"
        "block layer(x) {\n"
        "  return x + linear(token_shift(shortconv(rmsnorm(x), kernel = 3)))\n"
        "}\n"
        "model = causal_lm(vocab) { repeat(layers) layer }\n"
    )
    test_pieces_give_the_whole_sequence_logits(spec)


ATTENTION_VARIANTS = [
    "causal, pos = rope, window = 5, sinks = 2",
    "causal, pos = alibi, kv_heads = 1, qk_norm = true",
    "causal, pos = relative, persistent = 3",
    "causal, pos = rope, rope_scaling = xpos, persistent = 2, window = 4",
    "causal, pos = none",
]


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("options", ATTENTION_VARIANTS)
def test_attention_cache_follows_masks_and_positions(
    tmp_path: Path, options: str, backend: str
) -> None:
    """The key/value cache against one call on the whole sequence, for the masks and
    position schemes no spec in specs/ uses."""
    spec = tmp_path / "attn.arch"
    spec.write_text(
        "arch attn(d_model = 16, heads = 2, layers = 2, vocab = 20)\n"
        f"mixer att = attention({options})\n"
        "block layer(x) {\n"
        "  x = x + att(rmsnorm(x))\n"
        "  return x + mlp(rmsnorm(x), expand = 2, act = gelu)\n"
        "}\n"
        "model = causal_lm(vocab) { repeat(layers) layer }\n"
    )
    torch.manual_seed(0)
    model = archdsl.build(spec, backend=backend).double().eval()
    ids = torch.randint(0, 20, (2, 13))
    with torch.no_grad():
        whole = model(ids)
        stream = model.begin(2)
        pieces = [model.extend(ids[:, :5], stream)]
        pieces += [model.step(ids[:, t], stream).unsqueeze(1) for t in range(5, 9)]
        pieces.append(model.extend(ids[:, 9:], stream))
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-7, atol=1e-9)


def test_prefix_lm_attention_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "prefix.arch"
    spec.write_text(
        "arch prefix(d_model = 16, heads = 2, layers = 1, vocab = 20)\n"
        "mixer att = attention(causal, prefix = 4)\n"
        "block layer(x) {\n"
        "  return x + att(rmsnorm(x))\n"
        "}\n"
        "model = causal_lm(vocab) { repeat(layers) layer }\n"
    )
    with pytest.raises(ValueError, match="prefix LM"):
        archdsl.build(spec).begin(1)


def test_shared_weights_keep_one_state_per_application(tmp_path: Path) -> None:
    """``repeat(n, shared)`` applies the same modules n times per token: each application
    has its own state (keyed by call order), else the pieces would not match."""
    spec = tmp_path / "shared.arch"
    spec.write_text(
        "arch shared(d_model = 16, heads = 2, layers = 3, vocab = 20)\n"
        "memory memory {\n"
        "  structure = matrix\n"
        "  bias      = dot\n"
        "  retention = decay(alpha = data(per = head, act = logsigmoid))\n"
        "  learner   = gd(lr = 1)\n"
        "  features  = qkv(conv = 3, out_norm = rms)\n"
        "}\n"
        "mixer att = attention(causal, pos = rope)\n"
        "block layer(x) {\n"
        "  x = x + memory(rmsnorm(x)) + att(rmsnorm(x))\n"
        "  return x + mlp(rmsnorm(x), expand = 2, act = gelu)\n"
        "}\n"
        "model = causal_lm(vocab) { repeat(layers, shared) layer }\n"
    )
    test_pieces_give_the_whole_sequence_logits(spec)


MIXERS = [
    "semiseparable, causal, state = 8, conv = 4, expand = 2, headdim = 8",
    "lowrank, causal, state = 8, expand = 1, headdim = 8",
    "vandermonde, causal, state = 8, conv = 3, expand = 1, headdim = 8",
    "quasiseparable, causal, state = 8, expand = 1, headdim = 8",
    "vandermonde, causal, fixed, state = 8, expand = 1, headdim = 8",
    "toeplitz, causal, fixed, max_len = 32, conv = 3, expand = 1, headdim = 8",
    "toeplitz, causal, fixed, kernel = s4d, state = 8, expand = 1, headdim = 8",
    "cauchy, causal, fixed, max_len = 32, state = 8, expand = 1, headdim = 8",
]


@pytest.mark.parametrize("options", MIXERS)
def test_causal_mixers_continue(tmp_path: Path, options: str) -> None:
    """The matrix mixers with a recurrence (a prompt runs the chunked scan from the state,
    or steps) and the causal long convolutions (the new outputs as sums over the kept
    inputs): every piece equals the whole sequence."""
    spec = tmp_path / "mix.arch"
    spec.write_text(
        "arch mix(d_model = 16, heads = 2, layers = 2, vocab = 20)\n"
        f"mixer mx = matrix({options})\n"
        "block layer(x) {\n"
        "  x = x + mx(rmsnorm(x))\n"
        "  return x + mlp(rmsnorm(x), expand = 2, act = gelu)\n"
        "}\n"
        "model = causal_lm(vocab) { repeat(layers) layer }\n"
    )
    test_pieces_give_the_whole_sequence_logits(spec)


def test_titans_mac_segments_continue_across_pieces() -> None:
    """Pieces that start and end inside segments and cross one or two segment ends
    (segment = 8 at the test sizes)."""
    model = _model(ROOT / "specs" / "titans_mac.arch")
    ids = torch.randint(0, 20, (2, 21))
    with torch.no_grad():
        whole = model(ids)
        stream = model.begin(2)
        pieces = [model.extend(ids[:, :5], stream), model.extend(ids[:, 5:19], stream)]
        pieces += [model.step(ids[:, t], stream).unsqueeze(1) for t in (19, 20)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-7, atol=1e-9)
