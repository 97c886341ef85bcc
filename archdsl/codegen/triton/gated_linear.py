"""Emitter for the gated-linear memory family (linear attention, RetNet, Mamba2/SSD, GLA).

Recurrence (per batch b and head h; read after write):

    W_t = alpha_t W_{t-1} + lr_t k_t v_t^T,     o_t = scale * q_t W_t,
    alpha_t = exp(log_decay_t) (per head, or per key channel), W_0 = initial_state or 0.

Kernel layout: one program per (batch * head, dv tile); it holds the state tile
``[BLOCK_K, BLOCK_V]`` in registers and walks the sequence in chunks of ``BLOCK_T`` tokens.
Within a chunk, with ``b_i = sum_{s <= i} log alpha_s`` (cumulative log decay from the
chunk start, always <= 0):

    o_i   = scale * ( (q_i * e^{b_i}) W_start + sum_{j <= i} (q_i . k_j e^{b_i - b_j}) lr_j v_j )
    W_end = e^{b_last} W_start + sum_j (k_j e^{b_last - b_j} lr_j) v_j^T

All exponents are of non-positive numbers (the intra-chunk mask is applied in log space,
before ``exp``), so nothing overflows however strong the decay. Padding rows (t >= T)
load k = v = q = 0 and log alpha = 0, so they change neither outputs nor the state.
Per-channel decay cannot be factored into one matmul without a reference point that can
overflow, so the intra-chunk scores are formed as a ``[BLOCK_T, BLOCK_T, BLOCK_K]``
broadcast (exact, heavier on registers; use chunk_size 16 for it on GPU).
"""

from __future__ import annotations

from string import Template

from archdsl.codegen.triton.spec import GatedLinearFlags, KernelSpec

_KERNEL = Template("""
@triton.jit
def ${name}_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, lr_ptr, h0_ptr, o_ptr, ht_ptr,
    scale, T, H, DK, DV,
    stride_qb, stride_qt, stride_qh,
    stride_vb, stride_vt, stride_vh,
    stride_gb, stride_gt, stride_gh,
    HAS_DECAY: tl.constexpr,
    DECAY_PER_CHANNEL: tl.constexpr,
    HAS_LR: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_v = tl.program_id(1)
    i_b = pid_bh // H
    i_h = pid_bh % H

    offs_t = tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_k = offs_k < DK
    mask_v = offs_v < DV
    mask_state = mask_k[:, None] & mask_v[None, :]
    # read after write: token i sees the writes of tokens j <= i of its chunk
    causal = offs_t[:, None] >= offs_t[None, :]

    # q and k share a layout ([B, T, H, DK]); the state is [B, H, DK, DV], contiguous
    q_base = q_ptr + i_b * stride_qb + i_h * stride_qh
    k_base = k_ptr + i_b * stride_qb + i_h * stride_qh
    v_base = v_ptr + i_b * stride_vb + i_h * stride_vh
    o_base = o_ptr + i_b * stride_vb + i_h * stride_vh
    g_base = g_ptr + i_b * stride_gb + i_h * stride_gh
    state_offs = pid_bh * DK * DV + offs_k[:, None] * DV + offs_v[None, :]

    state = tl.zeros([BLOCK_K, BLOCK_V], dtype=tl.float32)
    if USE_INITIAL_STATE:
        state += tl.load(h0_ptr + state_offs, mask=mask_state, other=0.0).to(tl.float32)

    for start_t in range(0, T, BLOCK_T):
        rows = start_t + offs_t
        mask_t = rows < T
        mask_tk = mask_t[:, None] & mask_k[None, :]
        mask_tv = mask_t[:, None] & mask_v[None, :]
        q = tl.load(q_base + rows[:, None] * stride_qt + offs_k[None, :], mask=mask_tk, other=0.0)
        k = tl.load(k_base + rows[:, None] * stride_qt + offs_k[None, :], mask=mask_tk, other=0.0)
        v = tl.load(v_base + rows[:, None] * stride_vt + offs_v[None, :], mask=mask_tv, other=0.0)
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        v = v.to(tl.float32)
        if HAS_LR:
            lr = tl.load(lr_ptr + (i_b * T + rows) * H + i_h, mask=mask_t, other=0.0)
            k = k * lr.to(tl.float32)[:, None]

        if HAS_DECAY:
            if DECAY_PER_CHANNEL:
                g_offs = rows[:, None] * stride_gt + offs_k[None, :]
                g = tl.load(g_base + g_offs, mask=mask_tk, other=0.0)
                b = tl.cumsum(g.to(tl.float32), axis=0)
                b_last = tl.sum(g.to(tl.float32), axis=0)
                o = tl.dot(q * tl.exp(b), state, input_precision=DOT_PRECISION)
                log_gap = tl.where(causal[:, :, None], b[:, None, :] - b[None, :, :], float("-inf"))
                scores = tl.sum(q[:, None, :] * k[None, :, :] * tl.exp(log_gap), axis=2)
                o += tl.dot(scores, v, input_precision=DOT_PRECISION)
                k_to_end = k * tl.exp(b_last[None, :] - b)
                state = state * tl.exp(b_last)[:, None]
                state += tl.dot(tl.trans(k_to_end), v, input_precision=DOT_PRECISION)
            else:
                g = tl.load(g_base + rows * stride_gt, mask=mask_t, other=0.0).to(tl.float32)
                b = tl.cumsum(g, axis=0)
                b_last = tl.sum(g, axis=0)
                o = tl.dot(q, state, input_precision=DOT_PRECISION) * tl.exp(b)[:, None]
                log_gap = tl.where(causal, b[:, None] - b[None, :], float("-inf"))
                scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * tl.exp(log_gap)
                o += tl.dot(scores, v, input_precision=DOT_PRECISION)
                k_to_end = k * tl.exp(b_last - b)[:, None]
                state = state * tl.exp(b_last)
                state += tl.dot(tl.trans(k_to_end), v, input_precision=DOT_PRECISION)
        else:
            o = tl.dot(q, state, input_precision=DOT_PRECISION)
            scores = tl.where(causal, tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION), 0.0)
            o += tl.dot(scores, v, input_precision=DOT_PRECISION)
            state += tl.dot(tl.trans(k), v, input_precision=DOT_PRECISION)

        o = o * scale
        o_offs = rows[:, None] * stride_vt + offs_v[None, :]
        tl.store(o_base + o_offs, o.to(o_ptr.dtype.element_ty), mask=mask_tv)

    if STORE_FINAL_STATE:
        tl.store(ht_ptr + state_offs, state, mask=mask_state)
""")

_LAUNCHER_HEAD = Template('''
def ${name}(q, k, v, log_decay=None, lr=None, scale=None, initial_state=None):
    """Launch ${name}_kernel: o [B, T, H, dv] and the final state [B, H, dk, dv] (fp32) or None.

    q, k [B, T, H, dk]; v [B, T, H, dv]; log_decay ${decay_doc}; lr ${lr_doc};
    initial_state ${h0_doc}; scale defaults to dk ** -0.5.
    """
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"${name}: q, k must be [B, T, H, dk] and v [B, T, H, dv]; "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
''')

_CHECK_GIVEN = Template("""    if ${arg} is None or tuple(${arg}.shape) != ${shape}:
        got = None if ${arg} is None else tuple(${arg}.shape)
        raise ValueError(f"${name}: ${arg} must be ${doc}, got {got} "
                         "(${flag}=True)")
    ${local} = ${arg}.contiguous()
""")

_CHECK_ABSENT = Template("""    if ${arg} is not None:
        raise ValueError("${name}: ${arg} must be None (${flag}=False)")
    ${local} = q  # placeholder pointer, never read
""")

_LAUNCHER_TAIL = Template("""    if scale is None:
        scale = DK ** -0.5
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(v)
${alloc_ht}    BLOCK_K = max(16, triton.next_power_of_2(DK))
    BLOCK_V = min(max(16, triton.next_power_of_2(DV)), 64)
    # fp32 inputs are checked for exactness; half inputs may use tensor cores (tf32)
    precision = "ieee" if q.dtype in (torch.float32, torch.float64) else "tf32"
    grid = (B * H, triton.cdiv(DV, BLOCK_V))
    ${name}_kernel[grid](
        q, k, v, g, lr, h0, o, ht,
        float(scale), T, H, DK, DV,
        q.stride(0), q.stride(1), q.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        g.stride(0), g.stride(1), g.stride(2),
        HAS_DECAY=${has_decay},
        DECAY_PER_CHANNEL=${per_channel},
        HAS_LR=${has_lr},
        USE_INITIAL_STATE=${use_h0},
        STORE_FINAL_STATE=${store_ht},
        BLOCK_T=${chunk_size},
        BLOCK_K=BLOCK_K,
        BLOCK_V=BLOCK_V,
        DOT_PRECISION=precision,
    )
    return o, ${ret_ht}
""")

_ALLOC_HT = "    ht = q.new_empty((B, H, DK, DV), dtype=torch.float32)\n"
_PLACEHOLDER_HT = "    ht = o  # placeholder pointer, never written\n"


def emit_gated_linear(spec: KernelSpec) -> str:
    """Source of the kernel ``<name>_kernel`` and its launcher ``<name>`` for one spec.

    The launcher's signature is ``(q, k, v, log_decay=None, lr=None, scale=None,
    initial_state=None) -> (o, final_state | None)``; it checks that the optional inputs
    are given exactly when the spec's flags say so (with the right shapes) and raises
    ``ValueError`` otherwise. The flags are passed to the kernel as ``tl.constexpr``.
    """
    flags = spec.flags
    assert isinstance(flags, GatedLinearFlags)
    name = spec.name
    decay_doc = "[B, T, H, dk]" if flags.decay_per_channel else "[B, T, H]"
    decay_shape = "(B, T, H, DK)" if flags.decay_per_channel else "(B, T, H)"
    optional_inputs = (
        ("log_decay", "g", flags.has_decay, decay_shape, decay_doc, "HAS_DECAY"),
        ("lr", "lr", flags.has_lr, "(B, T, H)", "[B, T, H]", "HAS_LR"),
        (
            "initial_state",
            "h0",
            flags.use_initial_state,
            "(B, H, DK, DV)",
            "[B, H, dk, dv]",
            "USE_INITIAL_STATE",
        ),
    )
    checks = []
    for arg, local, given, shape, doc, flag in optional_inputs:
        template = _CHECK_GIVEN if given else _CHECK_ABSENT
        checks.append(
            template.substitute(name=name, arg=arg, local=local, shape=shape, doc=doc, flag=flag)
        )
    head = _LAUNCHER_HEAD.substitute(
        name=name,
        decay_doc=f"{decay_doc} (<= 0)" if flags.has_decay else "None",
        lr_doc="[B, T, H]" if flags.has_lr else "None",
        h0_doc="[B, H, dk, dv]" if flags.use_initial_state else "None",
    )
    tail = _LAUNCHER_TAIL.substitute(
        name=name,
        has_decay=repr(flags.has_decay),
        per_channel=repr(flags.decay_per_channel),
        has_lr=repr(flags.has_lr),
        use_h0=repr(flags.use_initial_state),
        store_ht=repr(flags.store_final_state),
        chunk_size=repr(flags.chunk_size),
        alloc_ht=_ALLOC_HT if flags.store_final_state else _PLACEHOLDER_HT,
        ret_ht="ht" if flags.store_final_state else "None",
    )
    kernel = _KERNEL.substitute(name=name).lstrip("\n")
    return kernel + head + "".join(checks) + tail
