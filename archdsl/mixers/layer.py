"""`MatrixMixerLayer`: the Hydra / Mamba2-style block around a matrix mixer, d_model -> d_model.

    u [B, T, d_model]
      -> in_proj -> z | x | per-token mixer inputs | dt           (see `layer_parts`)
      -> ShortConv (kernel ``mixer.conv``; causal, or centred when bidirectional) on
         x and the per-token inputs, then SiLU
      -> the mixer on x viewed as [B, T, H, P] (``core_for_mixer(mixer, backend)``)
      -> + x * D                          (semiseparable, toeplitz, vandermonde, cauchy)
      -> + x * (fc_D(x) + D)              (quasiseparable: the data-dependent diagonal)
      -> gated RMSNorm with z (``mixer.gate``; else plain RMSNorm) -> out_proj

Mamba-1 (``cls = semiseparable, kernel = selective``) follows its paper's block instead:
in_proj -> z | x; causal conv + SiLU on x only; ``dt, B, C`` from x by `SelectiveParams`
(``s6.x_proj``, ``s6.dt_proj``, ``s6.A_log [d_inner, N]``, ``s6.D [d_inner]``); the S6
scan with the skip ``D``; ``out_proj(y * silu(z))`` (no norm; ``y`` alone without gate).

Class parameters: scan classes get ``dt = softplus(dt_raw + dt_bias)``,
``log_a = -exp(A_log) * dt`` (A per head, shared by both directions), ``lr = dt``;
lowrank / attention use ``q, k`` per head with scale ``N^-1/2``; data-dependent cauchy uses
``q = softplus``, ``k = -softplus``, ``c = softplus(c_raw) + 1e-3`` (so no denominator
is below ``1e-3``) and scales the output by ``1/N``; data-dependent vandermonde uses ``b, c``
and learned nodes ``log_z = -exp(z_log)``. Fixed classes learn their parameters
(`archdsl.mixers.filters`): dense a matrix (needs ``max_len``); toeplitz taps by
``mixer.kernel`` (explicit: needs ``max_len``; implicit: Hyena MLP; s4 / s4d: the S4 / S4D
kernel); vandermonde an S4D kernel; cauchy an S4 DPLR kernel. ``dense`` and ``toeplitz``
are never sequence-aligned, so ``mixer.data`` is ignored for them.

Generation: ``initial_state(batch)`` and ``step(u_t [B, d_model], state) -> (y_t, state)``
for the causal classes with a recurrent form (`archdsl.mixers.recurrent`); the state
carries the conv window and the scan state. Others raise NotImplementedError.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archdsl.ir.mixers import MatrixMixer
from archdsl.mixers.core import core_for_mixer
from archdsl.mixers.filters import (
    DenseWeight,
    ExplicitFilter,
    ImplicitFilter,
    S4DParams,
    S4Params,
)
from archdsl.mixers.layer_parts import (
    SCAN_CLASSES,
    GatedRMSNorm,
    ShortConv,
    dt_segments,
    is_selective,
    token_segments,
    uses_projections,
)
from archdsl.mixers.recurrent import (
    CHUNKED_FORMS,
    MixerState,
    chunked_from_state,
    recurrent_form,
    scan_state,
    scan_step,
)
from archdsl.mixers.selective_params import SelectiveParams, dt_rank
from archdsl.mixers.toeplitz import causal_taps
from archdsl.runtime.streaming import active_stream, rerun_on_history, run_streamed

_SKIP_CLASSES = frozenset({"semiseparable", "toeplitz", "vandermonde", "cauchy"})


class MatrixMixerLayer(nn.Module):
    """A matrix-mixer block, d_model -> d_model; see the module docstring.

    ``heads``: number of heads (default ``d_inner // mixer.headdim``, ``d_inner =
    expand * d_model``). ``backend``: "torch" (fast paths) or "reference" (materialised
    matrices). ``forward(u [B, T, d_model]) -> [B, T, d_model]``.
    """

    def __init__(
        self, mixer: MatrixMixer, d_model: int, heads: int | None = None, backend: str = "torch"
    ) -> None:
        super().__init__()
        self.mixer = mixer
        self.causal = mixer.direction == "causal"
        self.d_inner = int(mixer.expand * d_model)
        self.heads = heads if heads is not None else max(1, self.d_inner // mixer.headdim)
        if self.d_inner % self.heads:
            raise ValueError(f"d_inner {self.d_inner} is not divisible by heads {self.heads}")
        self.headdim = self.d_inner // self.heads
        self.selective = is_selective(mixer)
        self.steps = _has_recurrence(mixer)  # constant-size state for `step`
        data = (mixer.data and mixer.cls not in ("dense", "toeplitz")) or self.selective
        self.core = core_for_mixer(mixer.model_copy(update={"data": data}), backend)

        self.tokens = token_segments(mixer, self.heads)
        self.dts = dt_segments(mixer, self.heads)
        widths = [self.d_inner] * (2 if mixer.gate else 1)
        widths += [w for _, w in self.tokens] + [w for _, w in self.dts]
        self.in_proj = nn.Linear(d_model, sum(widths), bias=False)
        conv_width = self.d_inner + sum(w for _, w in self.tokens)
        self.conv = ShortConv(conv_width, mixer.conv, self.causal) if mixer.conv > 0 else None
        self.fixed: nn.Module | None = None
        if self.selective:
            self.s6 = SelectiveParams(self.d_inner, mixer.state, dt_rank(d_model))
        else:
            self._init_mixer_params()
        self.norm = None if self.selective else GatedRMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _init_mixer_params(self) -> None:
        m, h, n = self.mixer, self.heads, self.mixer.state
        if m.cls in SCAN_CLASSES:
            self.A_log = nn.Parameter(torch.empty(h).uniform_(1.0, 16.0).log())
            dt = torch.exp(torch.empty(len(self.dts) * h).uniform_(math.log(1e-3), math.log(0.1)))
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1
        if m.cls in _SKIP_CLASSES or m.cls == "quasiseparable":
            self.D = nn.Parameter(torch.ones(h))
        if m.cls == "quasiseparable":
            self.fc_D = nn.Linear(self.d_inner, h, bias=False)
        if m.cls == "vandermonde" and m.data:
            self.z_log = nn.Parameter(torch.empty(h, n).uniform_(math.log(1e-3), math.log(0.5)))
        if m.cls == "cauchy" and m.data:
            self.c_raw = nn.Parameter(torch.zeros(h))
        self.fixed = self._fixed_params() if not uses_projections(m) else None

    def _fixed_params(self) -> nn.Module:
        m, h = self.mixer, self.heads
        if m.cls == "dense":
            return DenseWeight(h, m.max_len)
        if m.cls == "vandermonde" or (m.cls == "toeplitz" and m.kernel == "s4d"):
            return S4DParams(h, m.state, self.causal)
        if m.cls == "cauchy" or (m.cls == "toeplitz" and m.kernel == "s4"):
            return S4Params(h, m.state, self.causal, m.max_len)
        if m.kernel == "implicit":
            return ImplicitFilter(h)
        if m.max_len <= 0:
            raise ValueError(f"mixer '{m.name}': an explicit toeplitz filter needs max_len > 0")
        return ExplicitFilter(h, m.max_len, self.causal)

    def forward(self, u: Tensor) -> Tensor:
        if active_stream() is not None:  # generation (`archdsl.runtime.streaming`)
            if self.steps:
                return run_streamed(self, u, self.initial_state, self._continue)
            if self._convolves():
                return run_streamed(self, u, self._empty_history, self._convolve_new)
            return rerun_on_history(self, u, self._whole)
        return self._whole(u)

    def _convolves(self) -> bool:
        """A causal long convolution with fixed taps (toeplitz, S4's cauchy kernel)."""
        fixed = self.mixer.cls == "toeplitz" or (self.mixer.cls == "cauchy" and not self.mixer.data)
        return fixed and self.causal and self.fixed is not None

    def _empty_history(self, batch: int) -> tuple[Tensor | None, Tensor]:
        """The streamed state of a long convolution: the short conv's window and the
        mixer inputs so far ``[B, 0, H, P]``."""
        history = self.out_proj.weight.new_zeros(batch, 0, self.heads, self.headdim)
        return self._zero_window(batch), history

    def _convolve_new(
        self, u: Tensor, state: tuple[Tensor | None, Tensor]
    ) -> tuple[Tensor, tuple[Tensor | None, Tensor]]:
        """The new tokens' outputs of a causal long convolution: ``y_t = sum_l h_l x_(t-l)``
        over the kept inputs, ``O(T)`` per token, no FFT (the taps of lag ``l`` do not
        depend on the length)."""
        window, history = state
        z, x, x_flat, _, window = self._inputs_after(u, window)
        history = torch.cat([history.to(x.dtype), x], dim=1)
        total, new = history.shape[1], x.shape[1]
        assert self.fixed is not None
        taps = causal_taps(self.fixed.taps(total, True), total).to(x.dtype)  # type: ignore[operator]
        lag = torch.arange(total - new, total, device=x.device)[:, None] - torch.arange(
            total, device=x.device
        )
        rows = taps[:, lag.clamp(min=0)] * (lag >= 0)  # [H, new, total]
        y = torch.einsum("hij,bjhp->bihp", rows, history)
        return self._output(y, x, x_flat, z), (window, history)

    def _continue(self, u: Tensor, state: MixerState) -> tuple[Tensor, MixerState]:
        """``u [B, T, d_model]`` after ``state``: the chunked fast path from the state for
        the scans that take one (`chunked_from_state`), else `step` token by token."""
        form = recurrent_form(self.mixer)
        if u.shape[1] == 1 or form not in CHUNKED_FORMS:
            return self._step_through(u, state)
        z, x, x_flat, params, window = self._inputs_after(u, state.conv)
        y, scan = chunked_from_state(form, x, params, state.scan)
        return self._output(y, x, x_flat, z), MixerState(window, scan)

    def _step_through(self, u: Tensor, state: MixerState) -> tuple[Tensor, MixerState]:
        """`step` over every token of ``u [B, T, d_model]``."""
        outs = []
        for t in range(u.shape[1]):
            y, state = self.step(u[:, t], state)
            outs.append(y)
        return torch.stack(outs, dim=1), state

    def _whole(self, u: Tensor) -> Tensor:
        z, xt, dts = self._project(u)
        if self.conv is not None:
            xt = self.conv(xt)
        x, x_flat, params = self._mixer_inputs(F.silu(xt), dts)
        return self._output(self.core(x, **params), x, x_flat, z)

    def initial_state(self, batch: int) -> MixerState:
        """The state before the first token (zeros), for `step`."""
        form = recurrent_form(self.mixer)
        like = self.out_proj.weight
        scan = scan_state(form, batch, self.heads, self.mixer.state, self.headdim, like)
        return MixerState(self._zero_window(batch), scan)

    def _zero_window(self, batch: int) -> Tensor | None:
        """The short conv's first window: zeros, as its causal left padding (None: no conv)."""
        if self.conv is None:
            return None
        like = self.out_proj.weight
        return like.new_zeros(batch, self.mixer.conv - 1, self.conv.conv1d.in_channels)

    def step(self, u: Tensor, state: MixerState) -> tuple[Tensor, MixerState]:
        """One token: ``u [B, d_model]`` -> ``(y [B, d_model], next state)``; stepping
        through a sequence gives `forward`'s outputs."""
        form = recurrent_form(self.mixer)
        z, x, x_flat, params, window = self._inputs_after(u.unsqueeze(1), state.conv)
        y, scan, prev = scan_step(form, x[:, 0], params, state)
        out = self._output(y.unsqueeze(1), x, x_flat, z)
        return out[:, 0], MixerState(window, scan, prev)

    def _inputs_after(
        self, u: Tensor, window: Tensor | None
    ) -> tuple[Tensor | None, Tensor, Tensor, dict[str, Any], Tensor | None]:
        """`_whole`'s inputs for new tokens ``u [B, T, d_model]`` whose short conv
        continues from ``window``: ``(z, x, x flat, parameters, next window)``."""
        z, xt, dts = self._project(u)
        if self.conv is not None:
            assert window is not None
            xt, window = self.conv.extend(xt, window)
        x, x_flat, params = self._mixer_inputs(F.silu(xt), dts)
        return z, x, x_flat, params, window

    def _project(self, u: Tensor) -> tuple[Tensor | None, Tensor, dict[str, Tensor]]:
        """``(z, conv input [B, T, C] = x | per-token inputs, step sizes)``."""
        parts = self._split(self.in_proj(u))
        z = parts.pop("z", None)
        xt = torch.cat([parts.pop("x")] + [parts.pop(name) for name, _ in self.tokens], dim=-1)
        return z, xt, parts

    def _mixer_inputs(
        self, xt: Tensor, dts: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """``(x [B, T, H, P], x flat [B, T, d_inner], the core's keyword parameters)``."""
        bsz, length = xt.shape[:2]
        widths = [self.d_inner] + [w for _, w in self.tokens]
        x_flat, *tok = torch.split(xt, widths, dim=-1)
        x = x_flat.reshape(bsz, length, self.heads, self.headdim)
        if self.selective:
            return x, x_flat, self.s6(x_flat, self.heads)
        tokens = {name: t for (name, _), t in zip(self.tokens, tok)}
        return x, x_flat, self._mixer_params(tokens, dts, x_flat, length)

    def _output(self, y: Tensor, x: Tensor, x_flat: Tensor, z: Tensor | None) -> Tensor:
        y = self._add_diagonal(y, x, x_flat).reshape(*y.shape[:2], self.d_inner)
        if self.norm is not None:
            return self.out_proj(self.norm(y, z))  # type: ignore[no-any-return]
        return self.out_proj(y if z is None else y * F.silu(z))  # type: ignore[no-any-return]

    def _split(self, proj: Tensor) -> dict[str, Tensor]:
        names = (["z"] if self.mixer.gate else []) + ["x"]
        names += [name for name, _ in self.tokens] + [name for name, _ in self.dts]
        widths = [self.d_inner] * (2 if self.mixer.gate else 1)
        widths += [w for _, w in self.tokens] + [w for _, w in self.dts]
        return dict(zip(names, torch.split(proj, widths, dim=-1)))

    def _mixer_params(
        self, tokens: dict[str, Tensor], dts: dict[str, Tensor], x_flat: Tensor, length: int
    ) -> dict[str, Any]:
        m, h = self.mixer, self.heads
        if self.fixed is not None:
            if m.cls == "toeplitz":
                return {"filter": self.fixed.taps(length, self.causal)}  # type: ignore[operator]
            return self.fixed.params(length, self.causal)  # type: ignore[operator, no-any-return]
        if m.cls in SCAN_CLASSES:
            return self._scan_params(tokens, dts, x_flat)
        if m.cls == "vandermonde":
            return {**self._shared(tokens), "log_z": -self.z_log.exp()}
        q, k = (tokens[n].reshape(*tokens[n].shape[:2], h, -1) for n in ("q", "k"))
        if m.cls == "cauchy":
            return {"q": F.softplus(q), "k": -F.softplus(k), "c": F.softplus(self.c_raw) + 1e-3}
        return {"q": q, "k": k, "scale": m.state**-0.5}

    def _shared(self, tokens: dict[str, Tensor], suffix: str = "") -> dict[str, Tensor]:
        """b, c of one group, broadcast to every head: ``[B, T, H, N]``."""
        shape = (*tokens["b"].shape[:2], self.heads, self.mixer.state)
        return {name: tokens[name + suffix].unsqueeze(2).expand(shape) for name in ("b", "c")}

    def _scan_params(
        self, tokens: dict[str, Tensor], dts: dict[str, Tensor], x_flat: Tensor
    ) -> dict[str, Tensor]:
        h = self.heads
        a = -self.A_log.exp()
        dt = F.softplus(dts["dt"] + self.dt_bias[:h])
        params = {**self._shared(tokens), "log_a": dt * a, "lr": dt}
        if "dt_bw" in dts:
            dt_bw = F.softplus(dts["dt_bw"] + self.dt_bias[h:])
            bw = self._shared(tokens, "_bw")
            params.update(b_bw=bw["b"], c_bw=bw["c"], log_a_bw=dt_bw * a, lr_bw=dt_bw)
        if self.mixer.cls == "quasiseparable":
            params["delta"] = self.fc_D(x_flat) + self.D
        return params

    def _add_diagonal(self, y: Tensor, x: Tensor, x_flat: Tensor) -> Tensor:
        m = self.mixer
        if m.cls in _SKIP_CLASSES and not self.selective:  # S6 adds its D in the scan
            y = y + x * self.D.unsqueeze(-1)
        if m.cls == "cauchy" and m.data:
            y = y / m.state
        return y


def _has_recurrence(mixer: MatrixMixer) -> bool:
    """Whether `recurrent_form` gives the mixer a one-token step."""
    try:
        recurrent_form(mixer)
    except NotImplementedError:
        return False
    return True
