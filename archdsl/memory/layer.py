"""A Miras memory as an ``nn.Module``: projections around the functional core, and `step`.

`MemoryLayer` maps ``x`` ``[B, T, d_model]`` to ``y`` ``[B, T, d_model]``:

    q, k, v = proj(x) -> short causal conv -> act -> (q, k: l2 norm)     [B, T, H, dk|dv]
    gates   = lr, beta, alpha (log), delta from x (data / learned / const)
    o       = memory core (dispatch: archdsl.memory.rules.memory_function)
    y       = o_proj( out_gate(x) * out_norm(o) )

The recurrent state (`LayerState`) holds the memory's `MemoryState`, the conv caches and,
for test-time mini-batches (``batch`` b > 1), the core inputs of the current partly filled
mini-batch. The memory state is always the one at the last mini-batch boundary; a partial
mini-batch is replayed from there when the next tokens arrive. That makes `forward` with a
carried state, and `step`, give exactly the outputs of one `forward` over the whole
sequence, for any split, at a cost of at most b tokens of recomputation per call and
constant memory.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archdsl.ir.memory import Memory
from archdsl.memory.inner import memory_forward
from archdsl.memory.inputs import default_scale
from archdsl.memory.layer_gates import (
    add_gate_parameters,
    gate_values,
    memory_gates,
    shares_step,
)
from archdsl.memory.projections import CausalShortConv, feature_activation, l2_normalize
from archdsl.memory.rules import memory_function
from archdsl.memory.state import MemoryState
from archdsl.runtime.streaming import active_stream, run_streamed

OUT_NORM_EPS = 1e-6
# Added to the normalizer's denominator q . z, which is zero only where the features can
# vanish (relu): 0 / 0 becomes 0 instead of NaN. Far below float32 resolution otherwise.
NORMALIZER_EPS = 1e-12


class CoreInputs(NamedTuple):
    """The per-token inputs of the functional core (layout ``[B, T, H, ...]``)."""

    q: Tensor
    k: Tensor
    v: Tensor
    lr: Tensor
    decay: Tensor | None
    momentum: Tensor | None
    delta: Tensor | None

    @property
    def length(self) -> int:
        return self.q.shape[1]

    def slice(self, start: int, stop: int) -> CoreInputs:
        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:, start:stop]

        q, k, v, lr = (t[:, start:stop] for t in (self.q, self.k, self.v, self.lr))
        return CoreInputs(q, k, v, lr, cut(self.decay), cut(self.momentum), cut(self.delta))

    def cat(self, other: CoreInputs) -> CoreInputs:
        def join(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            return None if a is None or b is None else torch.cat([a, b], dim=1)

        q, k, v, lr = (
            torch.cat([a, b], dim=1)
            for a, b in zip(
                (self.q, self.k, self.v, self.lr), (other.q, other.k, other.v, other.lr)
            )
        )
        return CoreInputs(
            q,
            k,
            v,
            lr,
            join(self.decay, other.decay),
            join(self.momentum, other.momentum),
            join(self.delta, other.delta),
        )


class LayerState(NamedTuple):
    """Everything `MemoryLayer` carries between calls.

    ``memory``: the `MemoryState` at the last mini-batch boundary.
    ``conv``: caches of the q, k, v short convs (``[B, kernel - 1, C]``, pre-conv
      projections), in that order, only for the convs the layer has.
    ``pending``: core inputs of the partly filled mini-batch (b > 1), or None.
    ``recall_conv``: the q conv's cache over the stream `MemoryLayer.recall` reads (Titans
      MAC reads with the segments' inputs, not with what it writes), or None.
    """

    memory: MemoryState
    conv: tuple[Tensor, ...] = ()
    pending: CoreInputs | None = None
    recall_conv: Tensor | None = None


class MemoryLayer(nn.Module):
    """The layer around a Miras memory, with a recurrent `step`.

    Args: ``mem`` (the Memory IR), ``d_model``, ``heads``, ``backend`` ("torch" or
    "reference", passed to `memory_function`).

    Parameters (plain, stable names; the paper-reference tests copy weights by them):

    - ``q_proj``, ``k_proj``, ``v_proj``: ``nn.Linear`` without bias, d_model -> H*dk
      (H*dv for v). With ``retention.tie_key`` (HGRN2) there is no ``k_proj`` / ``k_conv``:
      the key is ``1 - alpha``.
    - ``q_conv``, ``k_conv``, ``v_conv`` (``features.conv`` > 0): `CausalShortConv`,
      ``weight`` ``[C, kernel]``, applied to the projection, before ``features.act``.
    - gates, role r in lr / beta / alpha / delta (see `archdsl.memory.layer_gates`):
      ``r_proj`` (``weight`` [out, d_model] + ``bias``, or low rank ``down`` / ``up``),
      ``r_A_log`` and ``r_dt_bias`` (mamba), ``r_param`` (learned).
    - ``w0_0``, ``w0_1``, ...: mlp memories' learned initial weights ``[H, d_in, d_out]``
      (hidden width ``int(expand * dk)``), expanded over the batch into the initial state.
      With ``kl`` retention (Memora) they are logits: W0 = softmax(w0_i) over the input
      axis, so that W0 > 0 (matrix / vector memories with kl start uniform, 1 / dk).
    - ``o_norm`` (``features.out_norm``): per-head norm over dv, ``weight`` [dv] (and
      ``bias`` for layer norm), eps 1e-6, shared by the heads.
    - ``g_proj`` (``features.out_gate``): ``nn.Linear`` d_model -> H*dv, no bias;
      ``y = act(x W_g) * norm(o)``.
    - ``o_proj``: ``nn.Linear`` H*dv -> d_model without bias.

    Scale on q: ``features.scale`` or the core's default (dk^-1/2 matrix/vector, 1 mlp).
    """

    def __init__(self, mem: Memory, d_model: int, heads: int, backend: str = "torch") -> None:
        super().__init__()
        feats = mem.features
        self.mem = mem
        self.d_model = d_model
        self.heads = heads
        self.dk = feats.dk or d_model // heads
        self.dv = feats.dv or d_model // heads
        self.backend = backend
        self.tie_key = mem.retention.tie_key
        self.gates = memory_gates(mem)
        self._build_features(d_model)
        deep = mem.structure.kind == "mlp"
        # rates that are alpha's own step (Mamba2): decided once, used by every forward
        self.tied = {role: shares_step(self.gates, role) for role in self.gates}
        for role, gate in self.gates.items():
            add_gate_parameters(self, role, gate, d_model, heads, self.dk, deep, self.tied[role])
        if deep:
            self._build_initial_weights()
        self._build_output(d_model)

    # ----------------------------------------------------------------------------- build
    def _build_features(self, d_model: int) -> None:
        feats = self.mem.features
        hk, hv = self.heads * self.dk, self.heads * self.dv
        self.q_proj = nn.Linear(d_model, hk, bias=False)
        self.k_proj = None if self.tie_key else nn.Linear(d_model, hk, bias=False)
        self.v_proj = nn.Linear(d_model, hv, bias=False)
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
        self.q_conv = self.k_conv = self.v_conv = None
        if feats.conv > 0:
            self.q_conv = CausalShortConv(hk, feats.conv)
            self.k_conv = None if self.tie_key else CausalShortConv(hk, feats.conv)
            self.v_conv = CausalShortConv(hv, feats.conv)

    def _build_initial_weights(self) -> None:
        dims = self._mlp_dims()
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            w = torch.randn(self.heads, d_in, d_out) / d_in**0.5
            self.register_parameter(f"w0_{i}", nn.Parameter(w))

    def _mlp_dims(self) -> list[int]:
        st = self.mem.structure
        hidden = int(st.expand * self.dk)
        return [self.dk] + [hidden] * (st.depth - 1) + [self.dv]

    def _build_output(self, d_model: int) -> None:
        feats = self.mem.features
        self.o_norm: nn.Module | None = None
        if feats.out_norm == "rms":
            self.o_norm = nn.RMSNorm(self.dv, eps=OUT_NORM_EPS)
        elif feats.out_norm == "layer":
            self.o_norm = nn.LayerNorm(self.dv, eps=OUT_NORM_EPS)
        self.g_proj = None
        if feats.out_gate != "none":
            self.g_proj = nn.Linear(d_model, self.heads * self.dv, bias=False)
            nn.init.xavier_uniform_(self.g_proj.weight)
        self.o_proj = nn.Linear(self.heads * self.dv, d_model, bias=False)
        nn.init.xavier_uniform_(self.o_proj.weight)
        self.persistent: nn.Parameter | None = None
        if feats.persistent:
            tokens = torch.randn(feats.persistent, d_model) * d_model**-0.5
            self.persistent = nn.Parameter(tokens)

    # ----------------------------------------------------------------------------- state
    def _convs(self) -> list[CausalShortConv]:
        return [c for c in (self.q_conv, self.k_conv, self.v_conv) if c is not None]

    def initial_state(self, batch_size: int) -> LayerState:
        """The state before the first token: zero (or W0) memory, zero conv caches; with
        ``features.persistent``, the state after the persistent tokens (input-independent,
        so every sequence starts from it: the memory computes ``M([p | x])``)."""
        like = self.q_proj.weight
        caches = tuple(c.empty_cache(batch_size, like) for c in self._convs())
        empty = LayerState(self._initial_memory(batch_size), caches, None)
        if self.persistent is None:
            return empty
        prefix = self.persistent.unsqueeze(0).expand(batch_size, -1, -1)
        _, state = self.forward(prefix, empty, return_state=True)
        return state

    def _initial_memory(self, batch_size: int) -> MemoryState:
        like = self.q_proj.weight
        kind = self.mem.structure.kind
        b, h = batch_size, self.heads
        kl = self.mem.retention.kind == "kl"
        if kind in ("matrix", "vector"):
            # with a normalizer the last value column holds the keys' sum z
            values = self.dv + int(self.mem.features.normalizer)
            shape = (b, h, self.dk, values) if kind == "matrix" else (b, h, self.dk)
            # Memora's softmax retention needs W > 0: start from the uniform distribution
            fill = 1.0 / self.dk if kl else 0.0
            return MemoryState((like.new_full(shape, fill),))
        n_layers = len(self._mlp_dims()) - 1
        weights = []
        for i in range(n_layers):
            w0 = getattr(self, f"w0_{i}")
            if kl:
                # w0_i are logits: W0 = softmax over each weight's input axis (positive)
                w0 = torch.softmax(w0, dim=-2)
            weights.append(w0.unsqueeze(0).expand(b, -1, -1, -1))
        return MemoryState(tuple(weights))

    # ----------------------------------------------------------------------------- forward
    def forward(
        self, x: Tensor, state: LayerState | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, LayerState]:
        """``x`` ``[B, T, d_model]`` -> ``y`` ``[B, T, d_model]`` (and the state after x).

        ``state``: a `LayerState` from `initial_state`, a previous call or `step`; None
        starts a new sequence.
        """
        if state is None and not return_state and active_stream() is not None:
            return run_streamed(self, x, self.initial_state, self._continue)
        if state is None:
            state = self.initial_state(x.shape[0])
        inputs, caches = self._core_inputs(x, state.conv)
        o, memory, pending = self._run_memory(inputs, state, need_state=return_state)
        y = self._output(o, x)
        if not return_state:
            return y
        assert memory is not None
        return y, LayerState(memory, caches, pending, state.recall_conv)

    def _continue(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        y, new_state = self.forward(x, state, return_state=True)
        assert isinstance(y, Tensor)
        return y, new_state

    def recall(
        self, x: Tensor, state: LayerState | None, weights: LayerState | None = None
    ) -> tuple[Tensor, LayerState]:
        """Read the memory as ``state`` holds it (or as ``weights`` does, when given: the
        segment start, for a segment fed in pieces), without writing: ``M_W(scale q(x))``;
        returns the read and ``state`` with the recall stream's conv cache advanced.

        Titans MAC's retrieval ``h_t = M*_{t-1}(q_t)`` (`recall(memory, x)` in a segmented
        block): q goes through this layer's projection, short conv (over the recall stream:
        its cache, ``state.recall_conv``, carries the previous segments' inputs), activation
        and l2 norm; the read goes through the same output norm, gate and projection as
        `forward`.
        """
        if state is None:
            state = self.initial_state(x.shape[0])
        bsz, length = x.shape[0], x.shape[1]
        z = self.q_proj(x)
        cache = state.recall_conv
        if self.q_conv is not None:
            z, cache = self.q_conv(z, self.q_conv.empty_cache(bsz, z) if cache is None else cache)
        q = feature_activation(self.mem.features.act, z).reshape(bsz, length, self.heads, self.dk)
        if self.mem.features.norm == "l2":
            q = l2_normalize(q)
        source = state if weights is None else weights
        read = tuple(w.unsqueeze(1) for w in source.memory.weights)
        o = memory_forward(self.mem.structure, read, q * default_scale(self.mem, self.dk))
        return self._output(o, x), state._replace(recall_conv=cache)

    def step(self, x_t: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """One token: ``x_t`` ``[B, d_model]`` -> (``y_t`` ``[B, d_model]``, next state)."""
        y, new_state = self._continue(x_t.unsqueeze(1), state)
        return y.squeeze(1), new_state

    def _core_inputs(self, x: Tensor, caches: tuple[Tensor, ...]) -> tuple[CoreInputs, tuple]:
        feats = self.mem.features
        bsz, length, h = x.shape[0], x.shape[1], self.heads
        gates = {
            role: gate_values(self, role, g, x, h, self.tied[role])
            for role, g in self.gates.items()
        }
        cache_iter = iter(caches)
        new_caches: list[Tensor] = []

        def feature(proj: nn.Linear, conv: CausalShortConv | None, dim: int, act: str) -> Tensor:
            z = proj(x)
            if conv is not None:
                z, cache = conv(z, next(cache_iter))
                new_caches.append(cache)
            return feature_activation(act, z).reshape(bsz, length, h, dim)

        q = feature(self.q_proj, self.q_conv, self.dk, feats.act)
        if self.k_proj is not None:
            k = feature(self.k_proj, self.k_conv, self.dk, feats.act)
        else:
            k = self._tied_key(gates.get("alpha"), q)
        v = feature(
            self.v_proj, self.v_conv, self.dv, feats.act if feats.act_on == "qkv" else "none"
        )
        if feats.normalizer:
            v = torch.cat([v, v.new_ones(bsz, length, h, 1)], dim=-1)
        if feats.norm == "l2":
            q = l2_normalize(q)
            k = k if self.tie_key else l2_normalize(k)
        inputs = CoreInputs(
            q, k, v, gates["lr"], gates.get("alpha"), gates.get("beta"), gates.get("delta")
        )
        return inputs, tuple(new_caches)

    def _tied_key(self, log_alpha: Tensor | None, like: Tensor) -> Tensor:
        """HGRN2: the key is the fraction forgotten, ``1 - alpha``, per key channel."""
        if log_alpha is None:
            raise ValueError("retention.tie_key needs a retention gate alpha")
        if log_alpha.dim() == 3:
            log_alpha = log_alpha.unsqueeze(-1)
        return (-torch.expm1(log_alpha)).expand_as(like)

    def _call_core(
        self, inputs: CoreInputs, initial: MemoryState, final: bool
    ) -> tuple[Tensor, MemoryState | None]:
        # resolved per call (cheap: a table lookup + cached import), so that the layer can be
        # built before the lowering targets exist and follows `backend` if it is changed
        core = memory_function(self.mem, self.backend)
        o, state = core(
            self.mem,
            inputs.q,
            inputs.k,
            inputs.v,
            lr=inputs.lr,
            decay=inputs.decay,
            momentum=inputs.momentum,
            delta=inputs.delta,
            scale=self.mem.features.scale,
            initial_state=initial,
            output_final_state=final,
        )
        return o, state

    def _run_memory(
        self, inputs: CoreInputs, state: LayerState, need_state: bool
    ) -> tuple[Tensor, MemoryState | None, CoreInputs | None]:
        """Run the core from the last mini-batch boundary; keep the partial mini-batch."""
        b = self.mem.batch
        skip = 0
        if state.pending is not None:
            skip = state.pending.length
            inputs = state.pending.cat(inputs)
        if not need_state:
            o, _ = self._call_core(inputs, state.memory, final=False)
            return o[:, skip:], None, None
        n_full = (inputs.length // b) * b
        outs: list[Tensor] = []
        memory = state.memory
        if n_full > 0:
            o_full, new_memory = self._call_core(inputs.slice(0, n_full), memory, final=True)
            assert new_memory is not None
            outs.append(o_full)
            memory = new_memory
        pending = None
        if n_full < inputs.length:
            pending = inputs.slice(n_full, inputs.length)
            o_tail, _ = self._call_core(pending, memory, final=False)
            outs.append(o_tail)
        o = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return o[:, skip:], memory, pending

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        feats = self.mem.features
        if feats.normalizer:
            # the read of the ones column is q . z: Katharopoulos' denominator
            o = o[..., : self.dv] / (o[..., self.dv :] + NORMALIZER_EPS)
        if self.o_norm is not None:
            o = self.o_norm(o)
        bsz, length = x.shape[0], x.shape[1]
        o = o.reshape(bsz, length, self.heads * self.dv)
        if self.g_proj is not None:
            g = self.g_proj(x)
            o = o * (torch.sigmoid(g) if feats.out_gate == "sigmoid" else F.silu(g))
        return self.o_proj(o)  # type: ignore[no-any-return]
