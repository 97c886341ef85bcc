"""Emitter for the attention backward: flash-attention-style, two kernels, same masks.

With ``p_ij = exp(s_ij - lse_i)`` rebuilt from the forward's log-sum-exp, ``s`` the
masked scaled scores (`<name>_masked_scores`, shared with the forward) and
``delta_i = sum_d do_id o_id`` (computed by the launcher):

    dv_j = sum_i p_ij do_i,   ds_ij = p_ij (do_i . v_j - delta_i),
    dk_j = scale sum_i ds_ij q_i,   dq_i = scale sum_j ds_ij k_j.

``<name>_bwd_dkdv_kernel``: one program per key block, looping over the query blocks
that can see it (all of them for a block holding sink / prefix keys; else those near the
diagonal). ``<name>_bwd_dq_kernel``: one program per query block, over the forward's key
ranges (`<name>_key_range`), loading key blocks with the forward's `<name>_load_kv`.
No atomics. ALiBi slopes get no gradient (treated as constants, as ALiBi defines them).
"""

from __future__ import annotations

from string import Template

from archdsl.codegen.triton.spec import MASK_PARAMS, AttentionFlags, KernelSpec

_KERNELS = Template("""
@triton.jit
def ${name}_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, slopes_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    scale, T, H, D,
    stride_b, stride_t, stride_h,
${mask_params}
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    i_b = pid_bh // H
    i_h = pid_bh % H
    start_n = pid_n * BLOCK_N

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mask_kv = (offs_n < T)[:, None] & mask_d[None, :]
    base = i_b * stride_b + i_h * stride_h
    kv_offs = base + offs_n[:, None] * stride_t + offs_d[None, :]
    k = tl.load(k_ptr + kv_offs, mask=mask_kv, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + kv_offs, mask=mask_kv, other=0.0).to(tl.float32)
    slope = scale * 0.0
    if HAS_ALIBI:
        slope = tl.load(slopes_ptr + i_h).to(tl.float32)

    # query blocks that can see this key block
    q_lo = start_n * 0
    q_hi = start_n * 0 + T
    if IS_CAUSAL:
        q_lo = start_n // BLOCK_M * BLOCK_M
    elif WINDOW > 0:
        q_lo = tl.maximum(start_n - WINDOW + 1, 0) // BLOCK_M * BLOCK_M
    if WINDOW > 0:
        q_hi = tl.minimum(start_n + BLOCK_N + WINDOW - 1, T)
    if PREFIX > 0 or SINKS > 0:
        # sink / prefix keys are seen from anywhere: scan every query block
        in_head = start_n < (PREFIX if PREFIX > SINKS else SINKS)
        q_lo = tl.where(in_head, 0, q_lo)
        q_hi = tl.where(in_head, T, q_hi)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(q_lo, q_hi, BLOCK_M):
        rows = start_m + offs_m
        mask_m = rows < T
        q_offs = base + rows[:, None] * stride_t + offs_d[None, :]
        mask_q = mask_m[:, None] & mask_d[None, :]
        q = tl.load(q_ptr + q_offs, mask=mask_q, other=0.0).to(tl.float32)
        do = tl.load(do_ptr + q_offs, mask=mask_q, other=0.0).to(tl.float32)
        lse = tl.load(lse_ptr + pid_bh * T + rows, mask=mask_m, other=0.0)
        delta = tl.load(delta_ptr + pid_bh * T + rows, mask=mask_m, other=0.0)
        scores = ${name}_masked_scores(
            q, k, rows[:, None], offs_n[None, :], scale, slope, T,
            IS_CAUSAL, WINDOW, PREFIX, SINKS, HAS_ALIBI, DOT_PRECISION,
        )
        p = tl.exp(scores - lse[:, None])
        dv += tl.dot(tl.trans(p), do, input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds), q, input_precision=DOT_PRECISION)

    tl.store(dk_ptr + kv_offs, (dk * scale).to(dk_ptr.dtype.element_ty), mask=mask_kv)
    tl.store(dv_ptr + kv_offs, dv.to(dv_ptr.dtype.element_ty), mask=mask_kv)


@triton.jit
def ${name}_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, slopes_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
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
    q_offs = base + offs_m[:, None] * stride_t + offs_d[None, :]
    mask_q = mask_m[:, None] & mask_d[None, :]
    q = tl.load(q_ptr + q_offs, mask=mask_q, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + q_offs, mask=mask_q, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + pid_bh * T + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(delta_ptr + pid_bh * T + offs_m, mask=mask_m, other=0.0)
    slope = scale * 0.0
    if HAS_ALIBI:
        slope = tl.load(slopes_ptr + i_h).to(tl.float32)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    head_hi, lo, hi = ${name}_key_range(
        start_m, T, IS_CAUSAL, WINDOW, PREFIX, SINKS, BLOCK_M, BLOCK_N
    )
    for start_n in range(0, head_hi, BLOCK_N):
        dq += ${name}_dq_block(
            q, do, lse, delta, k_ptr + base, v_ptr + base, start_n, offs_m, offs_n, offs_d,
            mask_d, stride_t, scale, slope, T,
            IS_CAUSAL, WINDOW, PREFIX, SINKS, HAS_ALIBI, DOT_PRECISION,
        )
    for start_n in range(lo, hi, BLOCK_N):
        dq += ${name}_dq_block(
            q, do, lse, delta, k_ptr + base, v_ptr + base, start_n, offs_m, offs_n, offs_d,
            mask_d, stride_t, scale, slope, T,
            IS_CAUSAL, WINDOW, PREFIX, SINKS, HAS_ALIBI, DOT_PRECISION,
        )
    tl.store(dq_ptr + q_offs, (dq * scale).to(dq_ptr.dtype.element_ty), mask=mask_q)


@triton.jit
def ${name}_dq_block(
    q, do, lse, delta, k_base, v_base, start_n, offs_m, offs_n, offs_d, mask_d,
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
    p = tl.exp(scores - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds, k, input_precision=DOT_PRECISION)
""")

_LAUNCHER = Template('''
def ${name}_backward(q, k, v, o, lse, do, alibi_slopes=None, scale=None):
    """Gradients (dq, dk, dv) of ${name}; lse [B, H, T] from ${name}(..., return_lse=True)."""
    B, T, H, D = q.shape
    if scale is None:
        scale = ${scale_default}
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
    slopes = ${slopes}
    # delta_i = do_i . o_i, [B, H, T] fp32
    delta = (do.float() * o.float()).sum(-1).transpose(1, 2).contiguous()
    lse = lse.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    BLOCK_M = 16 if T <= 16 else 32
    BLOCK_N = 16 if T <= 16 else 32
    BLOCK_D = max(16, triton.next_power_of_2(D))
    precision = "ieee" if q.dtype in (torch.float32, torch.float64) else "tf32"
    masks = dict(
        IS_CAUSAL=${causal}, WINDOW=${window}, PREFIX=${prefix}, SINKS=${sinks},
        HAS_ALIBI=${alibi}, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
        DOT_PRECISION=precision,
    )
    strides = (q.stride(0), q.stride(1), q.stride(2))
    ${name}_bwd_dkdv_kernel[(triton.cdiv(T, BLOCK_N), B * H)](
        q, k, v, slopes, do, lse, delta, dk, dv, float(scale), T, H, D, *strides, **masks
    )
    ${name}_bwd_dq_kernel[(triton.cdiv(T, BLOCK_M), B * H)](
        q, k, v, slopes, do, lse, delta, dq, float(scale), T, H, D, *strides, **masks
    )
    return dq, dk, dv
''')


def emit_attention_backward(spec: KernelSpec) -> str:
    """Source of the backward kernels and the launcher ``<name>_backward``.

    Needs the forward's helpers ``<name>_masked_scores`` and ``<name>_key_range`` in the
    same module (`emit_attention` emits them). Launcher: ``(q, k, v, o, lse, do,
    alibi_slopes=None, scale=None) -> (dq, dk, dv)``.
    """
    flags = spec.flags
    assert isinstance(flags, AttentionFlags)
    launcher = _LAUNCHER.substitute(
        name=spec.name,
        causal=repr(flags.is_causal),
        window=repr(flags.window),
        prefix=repr(flags.prefix),
        sinks=repr(flags.sinks),
        alibi=repr(flags.has_alibi),
        scale_default="D ** -0.5" if flags.scale is None else repr(flags.scale),
        slopes=(
            "alibi_slopes.to(device=q.device, dtype=torch.float32).contiguous()"
            if flags.has_alibi
            else "q  # placeholder pointer, never read"
        ),
    )
    return _KERNELS.substitute(name=spec.name, mask_params=MASK_PARAMS) + launcher
