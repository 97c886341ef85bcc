"""Softmax attention as a layer: projections, masks that compose, positions, persistent
tokens and sinks. Backends: `reference` (explicit softmax over the materialised mask),
`torch` (scaled_dot_product_attention), `triton` (generated kernel, when built)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archdsl.ir.mixers import Attention
from archdsl.runtime.positions import (
    RelativeEmbedding,
    alibi_slopes,
    apply_rope,
    rope_frequencies,
    xpos_scale,
)
from archdsl.runtime.streaming import active_stream, run_streamed


def attention_mask(
    att: Attention, t: int, device: torch.device | None = None, extra: int = 0, first_row: int = 0
) -> Tensor:
    """Boolean [T + P, T + P] mask (True = may attend) for P always-visible tokens then T tokens
    (only its rows from ``first_row`` on: the queries of a streamed call).

    P = the persistent tokens plus `extra` context tokens (Titans MAC's retrieved memory).
    Composition: causal (j <= i) OR within the prefix (both < prefix) ; AND within the
    window (i - j < window) unless the key is a sink or an always-visible token.
    Context tokens are aligned with the queries (context token c was read for token c):
    when causal, query i sees context tokens c <= i only -- otherwise a query would see,
    through the memory read of a later token, that token itself.
    """
    p = att.persistent + extra
    n = t + p
    i = torch.arange(first_row, n, device=device)[:, None] - p  # token positions; persistent < 0
    j = torch.arange(n, device=device)[None, :] - p
    allowed = torch.ones(n - first_row, n, dtype=torch.bool, device=device)
    if att.causal:
        in_prefix = (i < att.prefix) & (j < att.prefix)
        allowed = (j <= i) | in_prefix
    if att.window > 0:
        near = (i - j).abs() < att.window
        allowed = allowed & near
    always = (j < -extra) | ((j >= 0) & (j < att.sinks))
    if extra:
        c = j + extra  # index of a context token, 0 .. extra-1 for context columns
        is_context = (j < 0) & (j >= -extra)
        allowed = allowed & ~is_context
        always = always | (is_context & ((c <= i) | (not att.causal)))
    return allowed | always


class AttentionLayer(nn.Module):
    """Multi-head attention d_model -> d_model (q/k/v/o projections, GQA via kv_heads).

    Parameters: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``; ``persistent`` [P, d_model]
    learned tokens (Titans); ``q_norm`` / ``k_norm`` when qk_norm; ``relative`` table.
    """

    inv_freq: Tensor
    slopes: Tensor

    def __init__(self, att: Attention, d_model: int, heads: int, backend: str = "torch") -> None:
        super().__init__()
        self.att = att
        self.backend = backend
        self.heads = att.heads or heads
        self.kv_heads = att.kv_heads or self.heads
        self.head_dim = d_model // self.heads
        hd = self.head_dim
        self.q_proj = nn.Linear(d_model, self.heads * hd, bias=False)
        self.k_proj = nn.Linear(d_model, self.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d_model, self.kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.heads * hd, d_model, bias=False)
        if att.persistent:
            self.persistent = nn.Parameter(torch.randn(att.persistent, d_model) * d_model**-0.5)
        if att.qk_norm:
            self.q_norm = nn.RMSNorm(hd)
            self.k_norm = nn.RMSNorm(hd)
        if att.pos == "relative":
            self.relative = RelativeEmbedding(hd)
        if att.pos == "rope":
            freqs = rope_frequencies(hd, att.rope_base, att.rope_scaling, att.rope_factor)
            self.register_buffer("inv_freq", freqs, persistent=False)
        if att.pos == "alibi":
            self.register_buffer("slopes", alibi_slopes(self.heads), persistent=False)
        self.kernel: Callable[..., Tensor] | None = None  # set by the triton backend

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x [B, T, d_model] -> [B, T, d_model]. ``context`` [B, C, d_model]: tokens every
        query sees (after the persistent ones), e.g. the memory read of Titans MAC.
        Streaming (`archdsl.runtime.streaming`): the new tokens' queries against a cache of
        every key and value so far (`_extend_cache`)."""
        if active_stream() is not None:
            if context is None:
                return run_streamed(self, x, self._empty_cache, self._extend_cache)
            pair = torch.cat([x, context], dim=-1)  # the context is aligned with the tokens
            return run_streamed(self, pair, self._empty_cache, self._extend_with_context)
        b, t, _ = x.shape
        prefix = [self.persistent.to(x.dtype).expand(b, -1, -1)] if self.att.persistent else []
        if context is not None:
            prefix.append(context)
        p = sum(z.shape[1] for z in prefix)
        if prefix:
            x = torch.cat([*prefix, x], dim=1)
        n = x.shape[1]
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim)
        if self.att.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        positions = torch.arange(n, device=x.device) - p
        q, k = self._rotate(q, k, positions)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=2)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=2)
        y = self._attend(q, k, v, positions, p)
        y = y[:, p:].reshape(b, t, self.heads * self.head_dim)
        return self.o_proj(y)

    def _rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        return self._rotated(q, positions, key=False), self._rotated(k, positions, key=True)

    def _rotated(self, z: Tensor, positions: Tensor, key: bool) -> Tensor:
        """Queries or keys ``[B, N, H, hd]`` at ``positions`` after rope (xpos: queries
        times the scale, keys divided by it); persistent tokens (< 0) sit at 0."""
        if self.att.pos != "rope":
            return z
        pos = positions.clamp(min=0)
        z = apply_rope(z, pos, self.inv_freq, self.att.rope_scaling, self.att.rope_factor)
        if self.att.rope_scaling == "xpos":
            scale = xpos_scale(self.head_dim, pos).to(z.dtype)[None, :, None, :]
            z = z / scale if key else z * scale
        return z

    def _bias(
        self, q: Tensor, positions: Tensor, k_positions: Tensor | None = None
    ) -> Tensor | None:
        """Additive logits from the position scheme, [B or 1, H, N, S] (queries at
        ``positions``, keys at ``k_positions``, by default the same), or None."""
        k_positions = positions if k_positions is None else k_positions
        if self.att.pos == "alibi":
            dist = (positions[:, None] - k_positions[None, :]).abs().to(q.dtype)
            return -self.slopes.to(q.dtype)[None, :, None, None] * dist[None, None]
        if self.att.pos == "relative":
            return self.relative(q.transpose(1, 2), positions, k_positions)
        return None

    # ------------------------------------------------------------------------- streaming
    def _kv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Keys (normed, rotated) and values of ``x [B, N, d_model]`` at ``positions``."""
        b, n, _ = x.shape
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim)
        if self.att.qk_norm:
            k = self.k_norm(k)
        return self._rotated(k, positions, key=True), v

    def _empty_cache(self, batch: int) -> KVCache:
        """The cache before the first token: the persistent tokens' keys and values."""
        like = self.q_proj.weight
        p = self.att.persistent
        if not p:
            empty = like.new_zeros(batch, 0, self.kv_heads, self.head_dim)
            return KVCache(empty, empty, 0)
        tokens = self.persistent.expand(batch, -1, -1)
        k, v = self._kv(tokens, torch.arange(-p, 0, device=like.device))
        return KVCache(k, v, 0)

    def _extend_cache(self, x: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        """The new tokens ``x [B, T, d_model]`` attend to every cached key and to each
        other, under the same mask and positions as one call on the whole sequence."""
        p, start, t = self.att.persistent, cache.length, x.shape[1]
        q, k_new, v_new, positions = self._new_tokens(x, start)
        k = torch.cat([cache.k.to(k_new.dtype), k_new], dim=1)
        v = torch.cat([cache.v.to(v_new.dtype), v_new], dim=1)
        mask = attention_mask(self.att, start + t, x.device, first_row=p + start)
        bias = self._bias(q, positions, torch.arange(-p, start + t, device=x.device))
        return self._read(q, k, v, mask, bias), KVCache(k, v, start + t)

    def _extend_with_context(self, pair: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        """`_extend_cache` with context tokens aligned with the queries (Titans MAC's memory
        reads, one per token): ``pair = [x | context]`` on the last axis. The keys are
        ordered as in one call on the whole segment, ``[persistent, context, tokens]``;
        context keys sit at position 0 after rope, as there. (The context part of the
        cache is kept in ``ctx_k``, ``ctx_v``.)"""
        x, context = pair.chunk(2, dim=-1)
        p, start, t = self.att.persistent, cache.length, x.shape[1]
        ck, cv = self._kv(context, torch.full((t,), -1, device=x.device))  # rope position 0
        ctx_k = ck if cache.ctx_k is None else torch.cat([cache.ctx_k.to(ck.dtype), ck], dim=1)
        ctx_v = cv if cache.ctx_v is None else torch.cat([cache.ctx_v.to(cv.dtype), cv], dim=1)
        q, k_new, v_new, _ = self._new_tokens(x, start)
        kept_k = torch.cat([cache.k.to(k_new.dtype), k_new], dim=1)  # persistent, tokens
        kept_v = torch.cat([cache.v.to(v_new.dtype), v_new], dim=1)
        k = torch.cat([kept_k[:, :p], ctx_k, kept_k[:, p:]], dim=1)
        v = torch.cat([kept_v[:, :p], ctx_v, kept_v[:, p:]], dim=1)
        seen = start + t  # context tokens so far = tokens so far
        mask = attention_mask(self.att, seen, x.device, extra=seen, first_row=p + seen + start)
        out = self._read(q, k, v, mask, None)
        return out, KVCache(kept_k, kept_v, seen, ctx_k, ctx_v)

    def _new_tokens(self, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Queries (normed, rotated), keys and values of the new tokens ``x [B, T, d]``
        at positions ``start .. start + T - 1``, and those positions."""
        b, t, _ = x.shape
        positions = torch.arange(start, start + t, device=x.device)
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim)
        if self.att.qk_norm:
            q = self.q_norm(q)
        k, v = self._kv(x, positions)
        return self._rotated(q, positions, key=False), k, v, positions

    def _read(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, bias: Tensor | None) -> Tensor:
        """Softmax attention of the new queries over the cached keys, projected out."""
        y = self._softmax(q, self._repeat_kv(k), self._repeat_kv(v), mask, bias)
        return self.o_proj(y.reshape(*q.shape[:2], self.heads * self.head_dim))  # type: ignore[no-any-return]

    def _repeat_kv(self, z: Tensor) -> Tensor:
        if self.kv_heads == self.heads:
            return z
        return z.repeat_interleave(self.heads // self.kv_heads, dim=2)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, p: int) -> Tensor:
        n = q.shape[1]
        extra = p - self.att.persistent
        mask = attention_mask(self.att, n - p, q.device, extra)
        bias = self._bias(q, positions)
        scale = self.head_dim**-0.5
        # the generated kernel's flags fix the number of always-visible tokens: no context
        if self.backend == "triton" and self.kernel is not None and bias is None and not extra:
            return self.kernel(q, k, v, mask=mask, att=self.att, scale=scale)
        return self._softmax(q, k, v, mask, bias)

    def _softmax(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, bias: Tensor | None
    ) -> Tensor:
        """Softmax attention of ``q [B, N, H, hd]`` over ``k, v [B, S, H, hd]`` under a
        boolean ``[N, S]`` mask and an optional additive bias (torch or reference)."""
        scale = self.head_dim**-0.5
        qh, kh, vh = (z.transpose(1, 2) for z in (q, k, v))
        if self.backend == "reference":
            return _reference_attention(qh, kh, vh, mask, bias, scale).transpose(1, 2)
        full = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~mask, float("-inf")
        )
        if bias is not None:
            full = full + bias
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=full, scale=scale)
        return out.transpose(1, 2)


class KVCache(NamedTuple):
    """A streamed attention layer's state: keys (rotated) and values of the persistent
    tokens and of every token so far, ``[B, P + n, kv_heads, hd]``, and ``n``; with
    context tokens (Titans MAC), theirs, ``[B, n, kv_heads, hd]``."""

    k: Tensor
    v: Tensor
    length: int
    ctx_k: Tensor | None = None
    ctx_v: Tensor | None = None


def _reference_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, bias: Tensor | None, scale: float
) -> Tensor:
    """Definitional softmax attention, row by row: o_i = sum_j softmax_j(s_ij) v_j."""
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhij,bhjd->bhid", torch.softmax(scores, dim=-1), v)
