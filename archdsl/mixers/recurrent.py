"""Recurrent (one token at a time) forms of the causal matrix mixers, for generation.

A causal mixer whose matrix is semiseparable has a constant-size state ``S``; per token
(``x_t [B, H, P]``, parameters of that one token)::

    semiseparable (SSD)  S = exp(log_a) S + lr b x^T        y = c^T S          S [B, H, N, P]
    lowrank              S = S + k x^T                      y = scale q^T S
    vandermonde (data)   S = diag(z) S + b x^T              y = c^T S          z = exp(log_z)
    vandermonde (fixed)  S = diag(z) S + b_bar x^T          y = 2 Re(c^T S)    complex (S4D)
    quasiseparable       y = prev + delta x;  S = exp(log_a) S + lr b x^T;  prev = c^T S
                         (the shift: row t of the lower part reads the state at t - 1)
    selective (S6)       per channel, see `archdsl.mixers.selective_scan.selective_step`

`MixerState` carries that state and, when the layer has a short conv, its last
``kernel - 1`` inputs. Bidirectional mixers and the classes without a finite recurrent
form here (dense, attention, toeplitz, cauchy) raise `NotImplementedError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from archdsl.ir.mixers import MatrixMixer
from archdsl.mixers.filters import complex_modes
from archdsl.mixers.ops import complex_exp
from archdsl.mixers.selective_scan import selective_scan_chunked, selective_step
from archdsl.mixers.ssd import chunked_ssd
from archdsl.mixers.vandermonde import vandermonde_fixed_mix


class MixerState(NamedTuple):
    """A matrix-mixer layer's recurrent state.

    ``conv``: the last ``kernel - 1`` conv inputs ``[B, kernel - 1, C]`` (None without a
    conv); ``scan``: ``[B, H, N, P]`` (``[B, H, P, N]`` for the selective scan; complex
    for the fixed vandermonde); ``prev``: quasiseparable's ``c_{t-1}^T S_{t-1}``
    ``[B, H, P]``, else None.
    """

    conv: Tensor | None
    scan: Tensor
    prev: Tensor | None = None


def recurrent_form(mixer: MatrixMixer) -> str:
    """The name of ``mixer``'s one-token recurrence, or NotImplementedError saying why not."""
    if mixer.direction != "causal":
        raise NotImplementedError(
            f"mixer '{mixer.name}' ({mixer.cls}, bidirectional) has no recurrent step: each "
            "output depends on future tokens; step needs a causal mixer"
        )
    if mixer.cls == "semiseparable":
        return "selective" if mixer.kernel == "selective" else "semiseparable"
    if mixer.cls == "vandermonde":
        return "vandermonde/data" if mixer.data else "vandermonde/fixed"
    if mixer.cls in ("lowrank", "quasiseparable"):
        return mixer.cls
    raise NotImplementedError(
        f"mixer '{mixer.name}': the {mixer.cls} class has no recurrent step (it has no "
        "constant-size state here); step supports semiseparable (incl. selective), "
        "quasiseparable, lowrank and vandermonde mixers"
    )


def scan_state(form: str, batch: int, heads: int, state: int, width: int, like: Tensor) -> Tensor:
    """The zero scan state of ``form`` (see `MixerState`), dtype / device of ``like``."""
    if form == "selective":
        return like.new_zeros(batch, heads, width, state)
    if form == "vandermonde/fixed":  # state / 2 complex modes (`complex_modes`)
        modes = complex_modes(state)
        return torch.zeros(
            batch, heads, modes, width, dtype=_complex_of(like.dtype), device=like.device
        )
    return like.new_zeros(batch, heads, state, width)


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def scan_step(
    form: str, x: Tensor, params: dict[str, Any], state: MixerState
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One token of ``form``: ``x [B, H, P]``, parameters with a time dim of 1 (as the
    layer computes them for a length-1 input). Returns ``(y [B, H, P], scan, prev)``."""
    one = {k: (v[:, 0] if _per_token(k, v, form) else v) for k, v in params.items()}
    return _STEPS[form](x, one, state)


def _per_token(name: str, value: Any, form: str) -> bool:
    """Whether a parameter has a time dim (the fixed ones, ``a``, ``d``, ``log_z``... don't)."""
    if not isinstance(value, Tensor) or form == "vandermonde/fixed":
        return False
    return name not in ("a", "d", "log_z", "scale")


def _write(s: Tensor, decay: Tensor | None, key: Tensor, x: Tensor) -> Tensor:
    """``decay * S + key x^T`` with ``decay`` per head ``[B, H]`` or per row ``[.., N]``."""
    if decay is not None:
        s = s * (decay[..., None, None] if decay.dim() == 2 else decay.unsqueeze(-1))
    return s + key.unsqueeze(-1) * x.unsqueeze(-2)


def _read(q: Tensor, s: Tensor) -> Tensor:
    return torch.einsum("bhn,bhnp->bhp", q, s)


def _ssd(x: Tensor, p: dict[str, Any], st: MixerState) -> tuple[Tensor, Tensor, Tensor | None]:
    key = p["b"] if p.get("lr") is None else p["b"] * p["lr"].unsqueeze(-1)
    s = _write(st.scan, p["log_a"].exp(), key, x)
    return _read(p["c"], s), s, None


def _quasi(x: Tensor, p: dict[str, Any], st: MixerState) -> tuple[Tensor, Tensor, Tensor | None]:
    prev = torch.zeros_like(x) if st.prev is None else st.prev
    y = prev + p["delta"].unsqueeze(-1) * x
    _, s, _ = _ssd(x, p, st)
    return y, s, _read(p["c"], s)


def _lowrank(x: Tensor, p: dict[str, Any], st: MixerState) -> tuple[Tensor, Tensor, Tensor | None]:
    s = _write(st.scan, None, p["k"], x)
    return _read(p["q"] * p.get("scale", 1.0), s), s, None


def _vander_data(
    x: Tensor, p: dict[str, Any], st: MixerState
) -> tuple[Tensor, Tensor, Tensor | None]:
    s = _write(
        st.scan, p["log_z"].exp().to(x.dtype).expand(x.shape[0], *p["log_z"].shape), p["b"], x
    )
    return _read(p["c"], s), s, None


def _vander_fixed(
    x: Tensor, p: dict[str, Any], st: MixerState
) -> tuple[Tensor, Tensor, Tensor | None]:
    """S4D (ZOH): ``z = exp(dt a)``, ``b_bar = (z - 1) / a * b``; each complex state stands
    for a conjugate pair, hence ``2 Re``."""
    dta = p["log_dt"].exp().unsqueeze(-1) * p["a"]  # [H, N]
    z = dta.exp()
    b_bar = (z - 1.0) / p["a"] * p["b"]
    s = z.unsqueeze(-1) * st.scan + b_bar.unsqueeze(-1) * x.unsqueeze(-2).to(st.scan.dtype)
    y = 2.0 * torch.einsum("hn,bhnp->bhp", p["c"], s).real
    return y.to(x.dtype), s, None


def _selective(
    x: Tensor, p: dict[str, Any], st: MixerState
) -> tuple[Tensor, Tensor, Tensor | None]:
    y, s = selective_step(x, st.scan, dt=p["dt"], a=p["a"], b=p["b"], c=p["c"], d=p.get("d"))
    return y, s, None


# The forms whose chunked fast path also starts from a state and returns the final one.
CHUNKED_FORMS = frozenset(
    {"semiseparable", "lowrank", "vandermonde/data", "vandermonde/fixed", "selective"}
)


def chunked_from_state(
    form: str, x: Tensor, params: dict[str, Any], scan: Tensor
) -> tuple[Tensor, Tensor]:
    """``x [B, T, H, P]`` through the chunked scan of ``form`` (one of `CHUNKED_FORMS`),
    starting from the scan state ``scan`` of `scan_state`'s layout: ``(y, final state)``,
    what `scan_step` gives token by token."""
    p = params
    if form == "vandermonde/fixed":
        return _s4d_from_state(x, p, scan)
    if form == "selective":
        return selective_scan_chunked(
            x, dt=p["dt"], a=p["a"], b=p["b"], c=p["c"], d=p.get("d"), initial_state=scan
        )
    if form == "lowrank":
        q, k, extra = p["q"], p["k"], {"scale": p.get("scale", 1.0)}
    elif form == "vandermonde/data":
        decay = p["log_z"].to(x.dtype).expand(x.shape[0], x.shape[1], *p["log_z"].shape)
        q, k, extra = p["c"], p["b"], {"log_decay": decay}
    else:
        q, k, extra = p["c"], p["b"], {"log_decay": p["log_a"], "lr": p.get("lr")}
    y, final = chunked_ssd(q, k, x, initial_state=scan, output_final_state=True, **extra)
    assert final is not None
    return y, final


def _s4d_from_state(x: Tensor, p: dict[str, Any], scan: Tensor) -> tuple[Tensor, Tensor]:
    """S4D over ``x [B, T, H, P]`` from the complex state ``s0 [B, H, N, P]`` (`_vander_fixed`
    token by token): the FFT convolution from zero, plus the start state's decay
    ``y_t += 2 Re(sum_n c_n z_n^(t+1) s0_n)``; final state
    ``z^T s0 + sum_j z^(T-1-j) b_bar x_j``. Powers as ``exp(l dt a)``, O(T N) of them."""
    length = x.shape[1]
    dta = p["log_dt"].exp().unsqueeze(-1) * p["a"]  # [H, N]
    b_bar = (complex_exp(dta) - 1.0) / p["a"] * p["b"]
    lags = torch.arange(length + 1, device=x.device, dtype=dta.real.dtype)
    powers = complex_exp(dta.unsqueeze(-1) * lags)  # z^l, l = 0 .. T: [H, N, T + 1]
    conv = vandermonde_fixed_mix(x, log_dt=p["log_dt"], a=p["a"], b=p["b"], c=p["c"])
    s0 = scan.to(powers.dtype)
    carried = torch.einsum("hn,hnt,bhnp->bthp", p["c"], powers[..., 1:], s0)  # z^(t+1)
    y = conv + 2.0 * carried.real.to(x.dtype)
    back = powers[..., :length].flip(-1)  # z^(T-1-j), j = 0 .. T-1
    final = powers[..., length].unsqueeze(-1) * s0 + torch.einsum(
        "hn,hnt,bthp->bhnp", b_bar, back, x.to(powers.dtype)
    )
    return y, final


_STEPS: dict[str, Callable[[Tensor, dict[str, Any], MixerState], tuple[Tensor, Tensor, Any]]] = {
    "semiseparable": _ssd,
    "quasiseparable": _quasi,
    "lowrank": _lowrank,
    "vandermonde/data": _vander_data,
    "vandermonde/fixed": _vander_fixed,
    "selective": _selective,
}
