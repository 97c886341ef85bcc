"""One mini-batch of the 2-layer mlp memory, forward and hand-written backward.

The math is `chunked_ttt`'s (same formulas, same coefficients), written out for
``M(x) = [x +] norm(act(x W1) W2)`` (norm: none, or affine-free layer / rms) with the l2
bias, so that a whole chunk is a handful of batched products and the backward pass is
written by hand instead of differentiating the inner gradient through autograd (which
records a few hundred small nodes per chunk). Pointwise pieces: `chunked_ttt_mlp_pointwise`.

Layout: every tensor has one leading batch axis G (batch x heads); a chunk has n tokens.
q, k ``[G, n, dk]``, v ``[G, n, dv]``; state ``W1`` ``[G, dk, h]``, ``W2`` ``[G, h, dv]``
and, with momentum, ``S1``, ``S2`` alike. Coefficients (`ChunkCoefs`, from
`chunked_ttt_coef.coefficients`): ``a`` ``[G, n, 1]``, ``C`` ``[G, n, n]``, ``e`` and ``m``
``[G, n, 1]``, ``pm`` ``[G, 1, 1]``. Forward, with the gradient point P = the chunk-start
weights and the *negated* deltas (minus the inner gradient's output factors; J = the
norm's Jacobian at z2, the identity without norm):

    z1 = k W1, x2 = act(z1), z2 = x2 W2, d2 = J (v - [k +] norm(z2)), d1 = (d2 W2^T) * act'(z1)
    r1 = a (q W1) + e (q S1) + ((q k^T) * C) d1,        hq = act(r1)
    o  = [q +] norm(a (hq W2) + e (hq S2) + ((hq x2^T) * C) d2)
    W1' = a_end W1 + e_end S1 + (c_end k)^T d1,     S1' = pm S1 + (m k)^T d1
    W2' = a_end W2 + e_end S2 + x2^T (c_end d2),    S2' = pm S2 + x2^T (m d2)

with ``a_end = a[-1]``, ``e_end = e[-1]``, ``c_end = C[-1, :]``. Without momentum S, e, m,
pm are None. `chunk_backward` is the vector-Jacobian product of this map, reusing the
forward's intermediates kept in a `Tape`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from archdsl.memory.chunked_ttt_mlp_pointwise import (
    activation_derivatives,
    norm_rows,
    norm_vjp,
    norm_vjp_grad,
)

State = tuple[Tensor, Tensor, Tensor | None, Tensor | None]  # W1, W2, S1, S2


@dataclass
class ChunkCoefs:
    """A chunk's coefficients (shapes in the module doc); e, m, pm None without momentum."""

    a: Tensor
    C: Tensor
    e: Tensor | None
    m: Tensor | None
    pm: Tensor | None


@dataclass(frozen=True)
class MlpForm:
    """The memory's structure options the step depends on (from `archdsl.ir.memory.Structure`)."""

    residual: bool
    act: str
    norm: str


@dataclass
class Tape:
    """The forward intermediates `chunk_backward` reuses (chunk-start state included)."""

    state: State
    x2: Tensor
    der1: Tensor  # act'(z1)
    sec1: Tensor  # act''(z1)
    d1: Tensor
    d2: Tensor
    err1: Tensor  # d2 W2^T
    a1: Tensor  # q k^T
    der_r: Tensor  # act'(r1)
    hq: Tensor
    a2: Tensor  # hq x2^T
    key_norm: tuple[Tensor, Tensor, Tensor] | None  # norm(z2), its r, norm(z2) . (v - y)
    read_norm: tuple[Tensor, Tensor] | None  # the read's norm and its r


@dataclass
class ChunkGrads:
    """Gradients of one chunk's inputs (coefficient grads shaped like `ChunkCoefs`)."""

    q: Tensor
    k: Tensor
    v: Tensor
    a: Tensor
    C: Tensor
    e: Tensor | None
    m: Tensor | None
    pm: Tensor | None


def _t(x: Tensor) -> Tensor:
    return x.transpose(1, 2)


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    """``sum_d x[g, t, d] y[g, t, d]`` as ``[G, n, 1]``."""
    return (x * y).sum(-1, keepdim=True)


def _total(x: Tensor, y: Tensor) -> Tensor:
    """``sum x * y`` per batch entry, as ``[G, 1, 1]``."""
    return (x * y).sum((1, 2)).view(-1, 1, 1)


def _dual_read(
    z: Tensor, w: Tensor, s: Tensor | None, cf: ChunkCoefs, scores: Tensor, d: Tensor
) -> Tensor:
    """``a (z W) + e (z S) + (scores * C) d``: z through each token's weights of one layer."""
    out = torch.bmm(z, w).mul_(cf.a)
    if s is not None:
        assert cf.e is not None
        out.addcmul_(torch.bmm(z, s), cf.e)
    return out.baddbmm_(scores * cf.C, d)


def chunk_forward(
    st: State, q: Tensor, k: Tensor, v: Tensor, cf: ChunkCoefs, form: MlpForm, keep: bool
) -> tuple[Tensor, State, Tape | None]:
    """o ``[G, n, dv]``, the chunk-end state and, if ``keep``, the tape (see the module doc).

    The activation derivatives the backward needs are taken here, while their inputs are
    in cache, and kept instead of those inputs."""
    w1, w2, s1, s2 = st
    z1 = torch.bmm(k, w1)
    x2, der1, sec1 = activation_derivatives(form.act, z1, True, keep)
    assert der1 is not None
    z2 = torch.bmm(x2, w2)
    key_norm = None
    if form.norm == "none":
        y = z2.add_(k) if form.residual else z2
        d2 = torch.sub(v, y, out=y)  # minus the l2 output error y - v
    else:
        n2, r2 = norm_rows(form.norm, z2)
        err = v - n2 - k if form.residual else v - n2
        d2 = norm_vjp(form.norm, n2, r2, err)
        key_norm = (n2, r2, (n2 * err).sum(-1, keepdim=True))
    err1 = torch.bmm(d2, _t(w2))
    d1 = err1 * der1
    a1 = torch.bmm(q, _t(k))
    r1 = _dual_read(q, w1, s1, cf, a1, d1)
    hq, der_r, _ = activation_derivatives(form.act, r1, keep, False)
    a2 = torch.bmm(hq, _t(x2))
    o = _dual_read(hq, w2, s2, cf, a2, d2)
    read_norm = None
    if form.norm != "none":
        read_norm = norm_rows(form.norm, o)
        o = read_norm[0] + q if form.residual else read_norm[0]  # the tape keeps the norm
    elif form.residual:
        o.add_(q)
    new = _advance(st, cf, k, x2, d1, d2)
    if not keep:
        return o, new, None
    assert sec1 is not None and der_r is not None
    tape = Tape(st, x2, der1, sec1, d1, d2, err1, a1, der_r, hq, a2, key_norm, read_norm)
    return o, new, tape


def _advance(st: State, cf: ChunkCoefs, k: Tensor, x2: Tensor, d1: Tensor, d2: Tensor) -> State:
    """The chunk-end state (per-token scalars go on the narrower factor of each product)."""
    w1, w2, s1, s2 = st
    a_end, c_end = cf.a[:, -1:], cf.C[:, -1].unsqueeze(-1)
    w1n = (w1 * a_end).baddbmm_(_t(k * c_end), d1)  # in place: no copy of the first term
    w2n = (w2 * a_end).baddbmm_(_t(x2), d2 * c_end)
    if s1 is None or s2 is None:
        return w1n, w2n, None, None
    assert cf.e is not None and cf.m is not None and cf.pm is not None
    e_end = cf.e[:, -1:]
    w1n.addcmul_(s1, e_end)
    w2n.addcmul_(s2, e_end)
    s1n = (s1 * cf.pm).baddbmm_(_t(k * cf.m), d1)
    s2n = (s2 * cf.pm).baddbmm_(_t(x2), d2 * cf.m)
    return w1n, w2n, s1n, s2n


def _kept_backward(gw: Tensor, gs: Tensor | None, cf: ChunkCoefs) -> tuple[Tensor, Tensor | None]:
    """Gradients of the chunk-start W, S through what the chunk keeps of them
    (``W' = a_end W + e_end S + ...``, ``S' = pm S + ...``); gw, gs: of W', S'."""
    g_w = gw * cf.a[:, -1:]
    if gs is None:
        return g_w, None
    assert cf.e is not None and cf.pm is not None
    return g_w, torch.addcmul(gs * cf.pm, gw, cf.e[:, -1:])


def _end_dots(
    gw: Tensor, gs: Tensor | None, w: Tensor, s: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``<gW', W>``, ``<gW', S>``, ``<gS', S>``: the gradients of a_end, e_end, pm from one
    layer (taken right after the products that read W, S, while they are in cache)."""
    if gs is None or s is None:
        return _total(gw, w), None, None
    return _total(gw, w), _total(gw, s), _total(gs, s)


def _read_backward(
    z: Tensor,
    w: Tensor,
    s: Tensor | None,
    cf: ChunkCoefs,
    scores: Tensor,
    keys: Tensor,
    d: Tensor,
    g_out: Tensor,
    g_ws: tuple[Tensor, Tensor | None],
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor, Tensor]:
    """Backward of `_dual_read` (``out = a (z W) + e (z S) + ((z keys^T) * C) d``, with
    ``scores = z keys^T``): adds the W, S gradients into ``g_ws`` and returns
    (g_z, g_a, g_e, g_C, g_d, g_keys)."""
    tw = torch.bmm(g_out, _t(w))
    g_a = _rowdot(tw, z)
    g_z = tw.mul_(cf.a)
    g_ws[0].baddbmm_(_t(z), g_out * cf.a)
    g_e: Tensor | None = None
    if s is not None and g_ws[1] is not None:
        assert cf.e is not None
        ts = torch.bmm(g_out, _t(s))
        g_e = _rowdot(ts, z)
        g_z.addcmul_(ts, cf.e)
        g_ws[1].baddbmm_(_t(z), g_out * cf.e)
    g_p = torch.bmm(g_out, _t(d))
    g_d = torch.bmm(_t(scores * cf.C), g_out)
    g_c = g_p * scores
    g_scores = g_p.mul_(cf.C)
    g_z.baddbmm_(g_scores, keys)
    g_keys = torch.bmm(_t(g_scores), z)
    return g_z, g_a, g_e, g_c, g_d, g_keys


def _writes_backward(
    tape: Tape, k: Tensor, cf: ChunkCoefs, g: State, grads: tuple[Tensor, Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor | None]:
    """Backward of the writes ``k^T (c_end d1)``, ``x2^T (c_end d2)`` (and ``m`` instead of
    c_end into S): adds into grads = (g_k, g_x2, g_d1, g_d2); returns (g_c_end, g_m)."""
    gw1n, gw2n, gs1n, gs2n = g
    gk, gx2, gd1, gd2 = grads
    x2, d1, d2 = tape.x2, tape.d1, tape.d2
    c_end = cf.C[:, -1].unsqueeze(-1)
    t1 = torch.bmm(d1, _t(gw1n))  # d / d(c_end k)
    g_c_end = _rowdot(t1, k)
    gk.addcmul_(t1, c_end)
    gd1.baddbmm_(k * c_end, gw1n)
    gx2.baddbmm_(d2 * c_end, _t(gw2n))
    t2 = torch.bmm(x2, gw2n)  # d / d(c_end d2)
    g_c_end += _rowdot(t2, d2)
    gd2.addcmul_(t2, c_end)
    if gs1n is None or gs2n is None:
        return g_c_end, None
    assert cf.m is not None
    u1 = torch.bmm(d1, _t(gs1n))  # d / d(m k)
    g_m = _rowdot(u1, k)
    gk.addcmul_(u1, cf.m)
    gd1.baddbmm_(k * cf.m, gs1n)
    gx2.baddbmm_(d2 * cf.m, _t(gs2n))
    u2 = torch.bmm(x2, gs2n)  # d / d(m d2)
    g_m += _rowdot(u2, d2)
    gd2.addcmul_(u2, cf.m)
    return g_c_end, g_m


def chunk_backward(
    tape: Tape, q: Tensor, k: Tensor, cf: ChunkCoefs, form: MlpForm, go: Tensor, g: State
) -> tuple[ChunkGrads, State]:
    """Vector-Jacobian product of `chunk_forward`: the gradients of the chunk's inputs and of
    the chunk-start state, given ``go`` (of o) and ``g`` (of the chunk-end state; S grads
    must be tensors when the memory has momentum)."""
    w1, w2, s1, s2 = tape.state
    gw1n, gw2n, gs1n, gs2n = g
    g_w1, g_s1 = _kept_backward(gw1n, gs1n, cf)
    g_w2, g_s2 = _kept_backward(gw2n, gs2n, cf)
    # read, layer 2 (through the read's norm)
    g_r2 = go if tape.read_norm is None else norm_vjp(form.norm, *tape.read_norm, go)
    ghq, g_a, g_e, g_c, gd2, gx2 = _read_backward(
        tape.hq, w2, s2, cf, tape.a2, tape.x2, tape.d2, g_r2, (g_w2, g_s2)
    )
    a_end2, e_end2, pm2 = _end_dots(gw2n, gs2n, w2, s2)
    gr1 = ghq.mul_(tape.der_r)
    # read, layer 1
    gq, g_a1, g_e1, g_c1, gd1, gk = _read_backward(
        q, w1, s1, cf, tape.a1, k, tape.d1, gr1, (g_w1, g_s1)
    )
    a_end1, e_end1, pm1 = _end_dots(gw1n, gs1n, w1, s1)
    g_a += g_a1
    g_c += g_c1
    if form.residual:
        gq += go
    # the writes into the chunk-end state
    g_c_end, g_m = _writes_backward(tape, k, cf, g, (gk, gx2, gd1, gd2))
    # key pass: d1 = (d2 W2^T) * act'(z1), d2 = J (v - [k +] norm(x2 W2)), x2 = act(z1)
    g_err1 = gd1 * tape.der1
    g_der1 = gd1.mul_(tape.err1)
    gd2.baddbmm_(g_err1, w2)
    g_w2.baddbmm_(_t(g_err1), tape.d2)
    gv, g_z2 = _key_output_backward(tape, form, gd2)
    gx2.baddbmm_(g_z2, _t(w2))
    g_w2.baddbmm_(_t(tape.x2), g_z2)
    if form.residual:
        gk -= gv
    g_z1 = gx2.mul_(tape.der1).addcmul_(g_der1, tape.sec1)
    gk.baddbmm_(g_z1, _t(w1))
    g_w1.baddbmm_(_t(k), g_z1)
    # coefficients read at the chunk end
    g_a[:, -1:] += a_end1 + a_end2
    g_c[:, -1] += g_c_end.squeeze(-1)
    g_pm: Tensor | None = None
    if g_e is not None and g_e1 is not None and e_end1 is not None and e_end2 is not None:
        g_e += g_e1
        g_e[:, -1:] += e_end1 + e_end2
        assert pm1 is not None and pm2 is not None
        g_pm = pm1 + pm2
    grads = ChunkGrads(gq, gk, gv, g_a, g_c, g_e, g_m, g_pm)
    return grads, (g_w1, g_w2, g_s1, g_s2)


def _key_output_backward(tape: Tape, form: MlpForm, gd2: Tensor) -> tuple[Tensor, Tensor]:
    """(g_v, g_z2) from g_d2 for ``d2 = J(z2) (v - y)``, ``y = [k +] norm(z2)`` (g_k of the
    residual is ``-g_v``). Without norm, J = I: ``g_v = g_d2``, ``g_z2 = -g_d2``."""
    if tape.key_norm is None:
        return gd2, -gd2
    n2, r2, n_dot_err = tape.key_norm
    gv = norm_vjp(form.norm, n2, r2, gd2)
    g_z2 = norm_vjp_grad(form.norm, n2, r2, tape.d2, n_dot_err, gd2)
    return gv, g_z2.sub_(norm_vjp(form.norm, n2, r2, gv))
