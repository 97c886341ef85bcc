"""Emitter for the attention family: flash-attention-style forward with constexpr masks.

One program per (query block of ``BLOCK_M`` rows, batch * head). It keeps a running max
``m_i``, a running sum ``l_i`` and an unnormalised accumulator, and visits key blocks of
``BLOCK_N`` (online softmax). Masks compose as documented on `AttentionFlags`:

    visible(i, j) = j < T and ( local(i, j) or (i < PREFIX and j < PREFIX)
                                or (j < SINKS and (not IS_CAUSAL or j <= i)) )
    local(i, j)   = (not IS_CAUSAL or j <= i) and (WINDOW == 0 or |i - j| < WINDOW)

Key blocks are visited in two disjoint ranges: the "head" ``[0, min(lo, max(SINKS,
PREFIX)))`` (sinks and prefix keys left of the window) and the "main" range ``[lo, hi)``
around the diagonal (``lo`` is block aligned, so the ranges never overlap). Blocks
outside both are never loaded. The running max starts at a large finite negative number
rather than -inf, so a block whose keys are all masked adds exactly zero instead of NaN.
ALiBi adds ``-slope_h * |i - j|`` (the usual ``-slope * (i - j)`` under causality).
The forward also stores each row's log-sum-exp ``[B, H, T]`` for the generated backward
(`attention_bwd`), which this emitter appends to the same source.
"""

from __future__ import annotations

from string import Template

from archdsl.codegen.triton.attention_bwd import emit_attention_backward
from archdsl.codegen.triton.spec import MASK_PARAMS, AttentionFlags, KernelSpec

_KERNEL = Template("""
@triton.jit
def ${name}_masked_scores(
    q, k, rows, keys, scale, slope, T,
${mask_params}
    DOT_PRECISION: tl.constexpr,
):
    # scale * q k^T (+ alibi), -inf where query rows[i] may not see key keys[j]
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    if IS_CAUSAL:
        visible = keys <= rows
    else:
        visible = keys >= 0
    if WINDOW > 0:
        visible = visible & (rows - keys < WINDOW) & (keys - rows < WINDOW)
    if PREFIX > 0:
        visible = visible | ((rows < PREFIX) & (keys < PREFIX))
    if SINKS > 0:
        if IS_CAUSAL:
            visible = visible | ((keys < SINKS) & (keys <= rows))
        else:
            visible = visible | (keys < SINKS)
    visible = visible & (keys < T) & (rows < T)
    if HAS_ALIBI:
        distance = tl.abs(rows - keys).to(tl.float32)
        scores = scores - slope * distance
    return tl.where(visible, scores, float("-inf"))


@triton.jit
def ${name}_key_range(
    start_m, T,
    IS_CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    PREFIX: tl.constexpr,
    SINKS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # key blocks a query block may see: head [0, head_hi) and main [lo, hi), disjoint
    hi = T
    if IS_CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M, T)
    elif WINDOW > 0:
        hi = tl.minimum(start_m + BLOCK_M + WINDOW - 1, T)
    lo = start_m * 0
    if WINDOW > 0:
        lo = tl.maximum(start_m - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
    head_hi = start_m * 0
    if PREFIX > 0 or SINKS > 0:
        head = tl.minimum(T, PREFIX if PREFIX > SINKS else SINKS)
        hi = tl.maximum(hi, head)
        head_hi = tl.minimum(lo, head)
    return head_hi, lo, hi


@triton.jit
def ${name}_attend_block(
    acc, m_i, l_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d, mask_d,
    stride_kt, scale, slope, T,
${mask_params}
    DOT_PRECISION: tl.constexpr,
):
    cols = start_n + offs_n
    k, v = ${name}_load_kv(k_base, v_base, cols, offs_d, mask_d, stride_kt, T)
    scores = ${name}_masked_scores(
        q, k, offs_m[:, None], cols[None, :], scale, slope, T,
        IS_CAUSAL, WINDOW, PREFIX, SINKS, HAS_ALIBI, DOT_PRECISION,
    )
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    p = tl.exp(scores - m_new[:, None])
    rescale = tl.exp(m_i - m_new)
    l_i = l_i * rescale + tl.sum(p, axis=1)
    acc = acc * rescale[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def ${name}_load_kv(k_base, v_base, cols, offs_d, mask_d, stride_kt, T):
    # key / value rows `cols` (zeros past T), fp32
    mask_kv = (cols < T)[:, None] & mask_d[None, :]
    offs = cols[:, None] * stride_kt + offs_d[None, :]
    k = tl.load(k_base + offs, mask=mask_kv, other=0.0).to(tl.float32)
    v = tl.load(v_base + offs, mask=mask_kv, other=0.0).to(tl.float32)
    return k, v


@triton.jit
def ${name}_kernel(
    q_ptr, k_ptr, v_ptr, slopes_ptr, o_ptr, lse_ptr,
    scale, T, H, D,
    stride_b, stride_t, stride_h,
${mask_params}
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    i_b = pid_bh // H
    i_h = pid_bh % H
    start_m = pid_m * BLOCK_M

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < T
    mask_d = offs_d < D
    base = i_b * stride_b + i_h * stride_h
    q = tl.load(q_ptr + base + offs_m[:, None] * stride_t + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(tl.float32)

    slope = scale * 0.0  # a runtime fp32 scalar either way
    if HAS_ALIBI:
        slope = tl.load(slopes_ptr + i_h).to(tl.float32)
    # finite start: fully masked blocks then contribute exp(-inf) = 0, never NaN
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    head_hi, lo, hi = ${name}_key_range(
        start_m, T, IS_CAUSAL, WINDOW, PREFIX, SINKS, BLOCK_M, BLOCK_N
    )
    k_base = k_ptr + base
    v_base = v_ptr + base
    for start_n in range(0, head_hi, BLOCK_N):
        acc, m_i, l_i = ${name}_attend_block(
            acc, m_i, l_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d, mask_d,
            stride_t, scale, slope, T,
            IS_CAUSAL, WINDOW, PREFIX, SINKS, HAS_ALIBI, DOT_PRECISION,
        )
    for start_n in range(lo, hi, BLOCK_N):
        acc, m_i, l_i = ${name}_attend_block(
            acc, m_i, l_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d, mask_d,
            stride_t, scale, slope, T,
            IS_CAUSAL, WINDOW, PREFIX, SINKS, HAS_ALIBI, DOT_PRECISION,
        )

    # rows past T see no key; keep them finite (they are not stored)
    l_i = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_i[:, None]
    tl.store(o_ptr + base + offs_m[:, None] * stride_t + offs_d[None, :],
             o.to(o_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    # log-sum-exp per row, [B, H, T]: what the backward needs to rebuild the probabilities
    tl.store(lse_ptr + pid_bh * T + offs_m, m_i + tl.log(l_i), mask=mask_m)
""")

_LAUNCHER = Template('''
def ${name}(q, k, v, alibi_slopes=None, scale=None, return_lse=False):
    """Launch ${name}_kernel: softmax attention, q, k, v [B, T, H, D] -> o [B, T, H, D].

    With return_lse: (o, lse) where lse [B, H, T] (fp32) is each row's log-sum-exp.

    Masks fixed by the spec: IS_CAUSAL=${causal}, WINDOW=${window}, PREFIX=${prefix},
    SINKS=${sinks}; HAS_ALIBI=${alibi} (alibi_slopes [H] ${alibi_given});
    scale defaults to ${scale_doc}.
    """
    B, T, H, D = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"${name}: q, k, v must all be [B, T, H, D]; "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
${alibi_check}    if scale is None:
        scale = ${scale_default}
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    BLOCK_M = 16 if T <= 16 else 32
    BLOCK_N = 16 if T <= 16 else 32
    BLOCK_D = max(16, triton.next_power_of_2(D))
    precision = "ieee" if q.dtype in (torch.float32, torch.float64) else "tf32"
    grid = (triton.cdiv(T, BLOCK_M), B * H)
    ${name}_kernel[grid](
        q, k, v, slopes, o, lse,
        float(scale), T, H, D,
        q.stride(0), q.stride(1), q.stride(2),
        IS_CAUSAL=${causal},
        WINDOW=${window},
        PREFIX=${prefix},
        SINKS=${sinks},
        HAS_ALIBI=${alibi},
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D,
        DOT_PRECISION=precision,
    )
    return (o, lse) if return_lse else o
''')

_ALIBI_GIVEN = Template("""    if alibi_slopes is None or tuple(alibi_slopes.shape) != (H,):
        raise ValueError("${name}: alibi_slopes [H] must be given (HAS_ALIBI=True)")
    slopes = alibi_slopes.to(device=q.device, dtype=torch.float32).contiguous()
""")

_ALIBI_ABSENT = Template("""    if alibi_slopes is not None:
        raise ValueError("${name}: alibi_slopes must be None (HAS_ALIBI=False)")
    slopes = q  # placeholder pointer, never read
""")


def emit_attention(spec: KernelSpec) -> str:
    """Source of ``<name>_attend_block``, ``<name>_kernel`` and the launcher ``<name>``.

    Launcher: ``(q, k, v, alibi_slopes=None, scale=None) -> o``, all ``[B, T, H, D]``;
    masks are the spec's (``tl.constexpr``), the scale is a runtime float (the spec's
    value, else ``D ** -0.5``, unless the caller passes one).
    """
    flags = spec.flags
    assert isinstance(flags, AttentionFlags)
    name = spec.name
    alibi_check = (_ALIBI_GIVEN if flags.has_alibi else _ALIBI_ABSENT).substitute(name=name)
    launcher = _LAUNCHER.substitute(
        name=name,
        causal=repr(flags.is_causal),
        window=repr(flags.window),
        prefix=repr(flags.prefix),
        sinks=repr(flags.sinks),
        alibi=repr(flags.has_alibi),
        alibi_given="given" if flags.has_alibi else "None",
        alibi_check=alibi_check,
        scale_doc="D ** -0.5" if flags.scale is None else repr(flags.scale),
        scale_default="D ** -0.5" if flags.scale is None else repr(flags.scale),
    )
    forward = _KERNEL.substitute(name=name, mask_params=MASK_PARAMS).lstrip("\n") + launcher
    return forward + "\n" + emit_attention_backward(spec)
