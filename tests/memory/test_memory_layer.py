"""MemoryLayer: step == forward, split-and-continue, backends agree, gradients, names, inits."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import Tensor

from archdsl.ir.expr import BinOp, Name, Num
from archdsl.ir.memory import Bias, Features, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.layer import LayerState, MemoryLayer
from archdsl.memory.rules import select_rule

D_MODEL, HEADS = 16, 2
TOL = {"atol": 1e-11, "rtol": 1e-9}
SIG = Gate(mode="data", act="sigmoid")

FULL_FEATURES = Features(conv=3, act="silu", norm="l2", out_norm="rms", out_gate="silu")


def _mem(name: str, **kw: object) -> Memory:
    base: dict[str, object] = {
        "name": name,
        "structure": Structure(kind="matrix"),
        "bias": Bias(kind="l2"),
        "retention": Retention(kind="none"),
        "learner": Learner(kind="gd", lr=SIG),
        "features": FULL_FEATURES,
    }
    base.update(kw)
    return Memory(**base)  # type: ignore[arg-type]


MEMORIES = {
    # gated linear attention family: dot bias, per-channel data decay (GLA), low-rank gate
    "gla": _mem(
        "gla",
        bias=Bias(kind="dot"),
        retention=Retention(
            kind="decay", alpha=Gate(mode="data", per="channel", act="logsigmoid", rank=4)
        ),
        learner=Learner(kind="gd", lr=Gate(mode="const", value=1.0)),
    ),
    # delta rule with a Mamba2 decay (Gated DeltaNet)
    "gated_delta": _mem(
        "gated_delta",
        retention=Retention(kind="decay", alpha=Gate(mode="data", act="mamba")),
    ),
    # RetNet-like: const per-head decay from a formula, layer out-norm, sigmoid gate
    "retnet": _mem(
        "retnet",
        bias=Bias(kind="dot"),
        retention=Retention(
            kind="decay",
            alpha=Gate(
                mode="const",
                formula=BinOp(
                    op="-",
                    lhs=Num(value=1),
                    rhs=BinOp(
                        op="**",
                        lhs=Num(value=2),
                        rhs=BinOp(op="-", lhs=Num(value=-5), rhs=Name(name="head")),
                    ),
                ),
            ),
        ),
        learner=Learner(kind="gd", lr=Gate(mode="learned", value=0.5)),
        features=Features(conv=2, out_norm="layer", out_gate="sigmoid"),
    ),
    # HGRN2: key tied to 1 - alpha (per channel)
    "hgrn2": _mem(
        "hgrn2",
        bias=Bias(kind="dot"),
        retention=Retention(
            kind="decay", alpha=Gate(mode="data", per="channel", act="logsigmoid"), tie_key=True
        ),
        learner=Learner(kind="gd", lr=Gate(mode="const", value=1.0)),
        features=Features(conv=2, act="none", out_norm="rms"),
    ),
    # vector memory (elementwise state), Mamba2-style step size as lr, learned decay
    "vector_mamba_lr": _mem(
        "vector_mamba_lr",
        structure=Structure(kind="vector"),
        bias=Bias(kind="dot"),
        retention=Retention(
            kind="decay", alpha=Gate(mode="learned", per="channel", act="sigmoid", value=0.9)
        ),
        learner=Learner(kind="gd", lr=Gate(mode="data", act="mamba")),
        features=Features(conv=2, act="elu", out_norm="rms", out_gate="sigmoid"),
    ),
    # Titans-like deep memory: momentum, decay after, test-time mini-batch b = 4
    "titans_b4": _mem(
        "titans_b4",
        structure=Structure(kind="mlp", depth=2, expand=2.0, act="silu"),
        retention=Retention(kind="decay", alpha=Gate(mode="data", act="logsigmoid"), when="after"),
        learner=Learner(kind="momentum", lr=SIG, beta=Gate(mode="learned", value=0.9)),
        batch=4,
    ),
    # Moneta-like: lq retention carries an accumulator in the state, b = 3
    "moneta_b3": _mem(
        "moneta_b3",
        structure=Structure(kind="mlp", depth=2, expand=2.0, residual=True, norm="layer"),
        bias=Bias(kind="lp", p=3.0),
        retention=Retention(kind="lq", q=4.0, alpha=Gate(mode="data", act="logsigmoid")),
        batch=3,
    ),
}


def _available(mem: Memory, backend: str) -> bool:
    rule = select_rule(mem)
    target = "archdsl.memory.reference"
    if backend == "torch" and rule is not None:
        target = rule.target.partition(":")[0]
    try:
        importlib.import_module(target)
    except ModuleNotFoundError:
        return False
    if mem.retention.alpha is not None and mem.retention.alpha.formula is not None:
        try:
            importlib.import_module("archdsl.memory.gates")
        except ModuleNotFoundError:
            return False
    return True


def _layer(key: str, backend: str = "reference", seed: int = 0) -> MemoryLayer:
    mem = MEMORIES[key]
    if not _available(mem, backend):
        pytest.skip(f"a module '{key}' needs on '{backend}' is not written yet")
    torch.manual_seed(seed)
    layer = MemoryLayer(mem, D_MODEL, HEADS, backend=backend).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _x(length: int, batch: int = 2, seed: int = 1) -> Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, length, D_MODEL, dtype=torch.float64)


def _assert_states_close(a: LayerState, b: LayerState) -> None:
    for ta, tb in zip(a.memory.weights, b.memory.weights, strict=True):
        torch.testing.assert_close(ta, tb, **TOL)
    for ta, tb in zip(a.conv, b.conv, strict=True):
        torch.testing.assert_close(ta, tb, **TOL)
    assert (a.pending is None) == (b.pending is None)


@pytest.mark.parametrize("key", sorted(MEMORIES))
def test_step_matches_forward(key: str) -> None:
    layer = _layer(key)
    x = _x(13)
    y, final = layer(x, return_state=True)
    state = layer.initial_state(2)
    ys = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, dim=1), y, **TOL)
    _assert_states_close(state, final)


@pytest.mark.parametrize("key", sorted(MEMORIES))
@pytest.mark.parametrize("splits", [(5,), (1, 6, 4), (8,)])
def test_split_and_continue(key: str, splits: tuple[int, ...]) -> None:
    layer = _layer(key)
    x = _x(13)
    y_full, final = layer(x, return_state=True)
    state = None
    ys, start = [], 0
    for stop in [*[sum(splits[: i + 1]) for i in range(len(splits))], x.shape[1]]:
        y, state = layer(x[:, start:stop], state, return_state=True)
        ys.append(y)
        start = stop
    torch.testing.assert_close(torch.cat(ys, dim=1), y_full, **TOL)
    assert state is not None
    _assert_states_close(state, final)


@pytest.mark.parametrize("key", sorted(MEMORIES))
def test_torch_backend_matches_reference(key: str) -> None:
    ref = _layer(key, "reference")
    fast = _layer(key, "torch")
    fast.load_state_dict(ref.state_dict())
    x = _x(13).requires_grad_(True)
    y_ref, s_ref = ref(x, return_state=True)
    y_fast, s_fast = fast(x, return_state=True)
    torch.testing.assert_close(y_fast, y_ref, **TOL)
    _assert_states_close(s_fast, s_ref)
    cot = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], cot)
    g_fast = torch.autograd.grad(y_fast, [x, *fast.parameters()], cot)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("key", sorted(MEMORIES))
def test_gradients_reach_every_parameter(key: str) -> None:
    layer = _layer(key)
    x = _x(9).requires_grad_(True)
    layer(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_parameter_names_are_plain() -> None:
    names = set(_layer("gla").state_dict())
    assert names == {
        "q_proj.weight", "k_proj.weight", "v_proj.weight",
        "q_conv.weight", "k_conv.weight", "v_conv.weight",
        "alpha_proj.down.weight", "alpha_proj.up.weight", "alpha_proj.up.bias",
        "o_norm.weight", "g_proj.weight", "o_proj.weight",
    }  # fmt: skip
    titans = set(_layer("titans_b4").state_dict())
    assert {"w0_0", "w0_1", "lr_proj.weight", "lr_proj.bias", "beta_param"} <= titans
    assert {"alpha_proj.weight", "alpha_proj.bias"} <= titans
    gdn = set(_layer("gated_delta").state_dict())
    assert {"alpha_A_log", "alpha_dt_bias", "alpha_proj.weight"} <= gdn
    assert "alpha_proj.bias" not in gdn  # mamba's bias is dt_bias


def test_tied_key_has_no_key_projection() -> None:
    names = set(_layer("hgrn2").state_dict())
    assert not any(n.startswith(("k_proj", "k_conv")) for n in names)


def test_initial_gates_keep_and_learn_gently() -> None:
    """Fresh layers: decays close to 1, deep-memory learning rates small."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, D_MODEL)
    from archdsl.memory.layer_gates import gate_values

    # Mamba2's init spreads decays on purpose: -A dt with A in [1, 16], dt in [1e-3, 0.1]
    floors = {"gla": -0.05, "gated_delta": -1.7, "titans_b4": -0.05, "moneta_b3": -0.05}
    for key, floor in floors.items():
        layer = MemoryLayer(MEMORIES[key], D_MODEL, HEADS)
        log_alpha = gate_values(layer, "alpha", layer.gates["alpha"], x, HEADS)
        assert (log_alpha <= 0).all() and (log_alpha > floor).all(), key
    deep = MemoryLayer(MEMORIES["titans_b4"], D_MODEL, HEADS)
    lr = gate_values(deep, "lr", deep.gates["lr"], x, HEADS)
    assert (lr < 0.05).all()


def test_memora_initial_weights_are_positive() -> None:
    mem = _mem(
        "memora",
        structure=Structure(kind="mlp", depth=2, expand=2.0, residual=True, norm="layer"),
        retention=Retention(kind="kl", alpha=SIG),
    )
    layer = MemoryLayer(mem, D_MODEL, HEADS)
    for w in layer.initial_state(3).memory.weights:
        assert (w > 0).all()
        torch.testing.assert_close(w.sum(-2), torch.ones_like(w.sum(-2)))
