"""Fidelity: MemoryLayer (built from Memory IR) against hand-written paper references.

Each model's IR is constructed directly; the layer's parameters are passed by name to a
token-loop reference written from the paper (tests/references, no archdsl imports).
Outputs, gradients w.r.t. x and every weight, and the final memory must agree in float64.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from archdsl.ir.memory import Bias, Features, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.layer import LayerState, MemoryLayer
from archdsl.memory.rules import select_rule
from tests.references.gated_deltanet import gated_deltanet
from tests.references.linear_attention import linear_attention
from tests.references.memora import memora
from tests.references.moneta import moneta
from tests.references.titans_lmm import titans_lmm
from tests.references.yaad import yaad

D_MODEL, HEADS, T, B = 16, 2, 19, 2
ATOL, RTOL = 1e-10, 1e-8
BACKENDS = ("reference", "torch")

MIRAS_FEATURES = Features(conv=4, norm="l2", out_norm="rms", out_gate="sigmoid")
MIRAS_MLP = Structure(kind="mlp", depth=2, expand=4.0, act="gelu", residual=True, norm="layer")


def _low_rank(act: str) -> Gate:
    return Gate(mode="data", act=act, rank=4)


def linear_attention_ir() -> Memory:
    return Memory(
        name="linear_attention",
        structure=Structure(kind="matrix"),
        bias=Bias(kind="dot"),
        retention=Retention(kind="none"),
        learner=Learner(kind="gd", lr=Gate(mode="const", value=1.0)),
        features=Features(scale=1.0),
    )


def gated_deltanet_ir() -> Memory:
    return Memory(
        name="gated_deltanet",
        structure=Structure(kind="matrix"),
        bias=Bias(kind="l2"),
        retention=Retention(kind="decay", alpha=Gate(mode="data", act="mamba"), when="before"),
        learner=Learner(kind="gd", lr=Gate(mode="data", act="sigmoid")),
        features=Features(conv=4, act="silu", norm="l2", out_norm="rms", out_gate="silu"),
    )


def titans_ir(batch: int) -> Memory:
    return Memory(
        name="titans_lmm",
        structure=Structure(kind="mlp", depth=2, expand=4.0, act="silu"),
        bias=Bias(kind="l2"),
        retention=Retention(kind="decay", alpha=Gate(mode="data", act="logsigmoid"), when="after"),
        learner=Learner(
            kind="momentum",
            lr=Gate(mode="data", act="sigmoid"),
            beta=Gate(mode="data", act="sigmoid"),
        ),
        batch=batch,
        features=Features(conv=4, act="silu", norm="l2", out_norm="rms", out_gate="sigmoid"),
    )


def miras_ir(name: str, batch: int) -> Memory:
    alpha = _low_rank("logsigmoid")
    bias = {
        "moneta": Bias(kind="lp", p=3.0),
        "yaad": Bias(kind="huber", form="mixture", delta=_low_rank("softplus")),
        "memora": Bias(kind="l2"),
    }[name]
    retention = {
        "moneta": Retention(kind="lq", q=4.0, alpha=alpha, when="after"),
        "yaad": Retention(kind="decay", alpha=alpha, when="after"),
        "memora": Retention(kind="kl", alpha=alpha, when="after"),
    }[name]
    return Memory(
        name=name,
        structure=MIRAS_MLP,
        bias=bias,
        retention=retention,
        learner=Learner(kind="gd", lr=_low_rank("sigmoid")),
        batch=batch,
        features=MIRAS_FEATURES,
    )


def _backend_available(mem: Memory, backend: str) -> bool:
    rule = select_rule(mem)
    if backend == "reference" or rule is None:
        target = "archdsl.memory.reference"
    else:
        target = rule.target.partition(":")[0]
    try:
        importlib.import_module(target)
    except ModuleNotFoundError:
        return False
    return True


def _make_layer(mem: Memory, backend: str, seed: int = 0) -> MemoryLayer:
    if not _backend_available(mem, backend):
        pytest.skip(f"the lowering target of '{mem.name}' on '{backend}' is not written yet")
    torch.manual_seed(seed)
    layer = MemoryLayer(mem, D_MODEL, HEADS, backend=backend).double()
    with torch.no_grad():  # move every parameter off its init so nothing is trivially 0 or 1
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _compare(
    layer: MemoryLayer,
    reference: Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, ...]],
    states: Callable[[LayerState], tuple[Tensor, ...]],
    batch: int = 1,
) -> None:
    """Outputs and grads (x and every parameter) at T, layer vs reference; final states.

    The layer carries its memory at the last mini-batch boundary (the tokens after it are
    pending), so for T % b != 0 the state is compared with the reference run up to there.
    """
    torch.manual_seed(1)
    x = torch.randn(B, T, D_MODEL, dtype=torch.float64, requires_grad=True)
    params = dict(layer.named_parameters())
    y, state = layer(x, return_state=True)
    ref = reference(x, params)
    torch.testing.assert_close(y, ref[0], atol=ATOL, rtol=RTOL)
    cot = torch.randn_like(y)
    inputs = [x, *params.values()]
    grads = torch.autograd.grad(y, inputs, cot)
    grads_ref = torch.autograd.grad(ref[0], inputs, cot)
    for name, g, g_ref in zip(["x", *params], grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=ATOL, rtol=RTOL, msg=f"grad of {name}")
    boundary = T - T % batch
    if boundary != T:
        ref = reference(x[:, :boundary], params)
    finals_ref = [t for item in ref[1:] for t in (item if isinstance(item, tuple) else (item,))]
    finals = states(state)
    assert len(finals) == len(finals_ref)
    for got, want in zip(finals, finals_ref):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def _weights(state: LayerState) -> tuple[Tensor, ...]:
    return state.memory.weights


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_attention(backend: str) -> None:
    layer = _make_layer(linear_attention_ir(), backend)
    _compare(layer, lambda x, w: linear_attention(x, w, HEADS), _weights)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_attention_paper_form(backend: str) -> None:
    """The paper's model: phi = elu + 1 on q and k only, and the normaliser q . z."""
    mem = linear_attention_ir().model_copy(
        update={"features": Features(scale=1.0, act="elu", act_on="qk", normalizer=True)}
    )
    layer = _make_layer(mem, backend)

    def state_and_sum(state: LayerState) -> tuple[Tensor, ...]:
        (w,) = state.memory.weights  # the keys' sum z is the last value column
        return w[..., :-1], w[..., -1]

    _compare(layer, lambda x, w: linear_attention(x, w, HEADS, "elu1", True), state_and_sum)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_deltanet(backend: str) -> None:
    layer = _make_layer(gated_deltanet_ir(), backend)
    _compare(layer, lambda x, w: gated_deltanet(x, w, HEADS), _weights)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 4])
def test_titans_lmm(backend: str, batch: int) -> None:
    layer = _make_layer(titans_ir(batch), backend)

    def states(state: LayerState) -> tuple[Tensor, ...]:
        assert state.memory.momentum is not None
        return state.memory.weights + state.memory.momentum

    _compare(layer, lambda x, w: titans_lmm(x, w, HEADS, batch), states, batch)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 4])
def test_moneta(backend: str, batch: int) -> None:
    layer = _make_layer(miras_ir("moneta", batch), backend)

    def states(state: LayerState) -> tuple[Tensor, ...]:
        return state.memory.weights + state.memory.extra[:2]  # W, then the accumulator A

    _compare(layer, lambda x, w: moneta(x, w, HEADS, batch), states, batch)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 4])
def test_yaad(backend: str, batch: int) -> None:
    layer = _make_layer(miras_ir("yaad", batch), backend)
    with torch.no_grad():  # thresholds near the errors' norms, so both Huber branches occur
        layer.delta_proj.up.bias.fill_(4.0)
    _compare(layer, lambda x, w: yaad(x, w, HEADS, batch), _weights, batch)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 4])
def test_memora(backend: str, batch: int) -> None:
    layer = _make_layer(miras_ir("memora", batch), backend)
    _compare(layer, lambda x, w: memora(x, w, HEADS, batch), _weights, batch)
