"""The chunked gated linear scan behind the scan-based mixers: ONE implementation.

The semiseparable mixer with a scalar decay per head IS Mamba2's memory (matrix memory,
dot bias, per-head data decay, data lr), and the causal low-rank mixer IS linear
attention; the data-dependent Vandermonde mixer is the same recurrence with a decay per
key channel (GLA). So these mixers do not carry a scan of their own: `chunked_ssd`
adapts their arguments to the memory engineers'
`archdsl.memory.chunked_linear.chunked_gated_linear` (the function the lowering table
selects for those memories) and calls it. (Mamba's selective scan is that recurrence
too, with one "head" per channel and value width 1, but that shape ran 20-60x slower
than a token loop; it has its own chunk-parallel scan, `archdsl.mixers.selective_scan`.)
::

    S_t = exp(log_decay_t) * S_{t-1} + lr_t * k_t v_t^T,        o_t = scale * q_t^T S_t

``log_decay`` one value per head (``[B, T, H]``, SSD) or per key channel (``[B, T, H, K]``).
Log-space stability and chunking are that function's (see its module docstring).

The chunked function cuts long sequences into cache-sized segments itself, so
`chunked_ssd` calls it once. The bidirectional scan
(`archdsl.mixers.semiseparable.scan_both_directions`) runs the same segment engine on the
forward and the reversed sequence stacked on the batch axis, in segments of
`segment_length` tokens: about ``SEGMENT_TOKEN_HEADS`` tokens x heads x batch (both
directions counted), the memories' segment size.
"""

from __future__ import annotations

from torch import Tensor

from archdsl.ir.memory import Bias, Gate, Learner, Memory, Retention, Structure
from archdsl.memory.chunked_linear import DEFAULT_CHUNK, chunked_gated_linear

# The memory the scan computes: matrix structure, dot bias, data decay, gd with data lr
# (Mamba2 / SSD); the function checks that a decay is given exactly when retention is decay.
SSD_MEMORY = Memory(
    name="ssd",
    structure=Structure(kind="matrix"),
    bias=Bias(kind="dot"),
    retention=Retention(kind="decay", alpha=Gate(mode="data", act="mamba")),
    learner=Learner(kind="gd", lr=Gate(mode="data", act="softplus")),
)
# Tokens x heads x batch per segment of the bidirectional scan (see the module docstring);
# at B = 1, H = 4, T = 4096, 2048 was 5-10% faster than 1024 or 4096.
SEGMENT_TOKEN_HEADS = 2048
# Segments are at least this many chunks, so that per-segment overhead stays small.
MIN_SEGMENT_CHUNKS = 4
# Without decay: linear attention (the causal low-rank mixer).
LINEAR_ATTENTION_MEMORY = SSD_MEMORY.model_copy(
    update={"name": "linear_attention", "retention": Retention(kind="none")}
)


def chunked_ssd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    log_decay: Tensor | None = None,
    lr: Tensor | None = None,
    scale: float = 1.0,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """Gated linear recurrence, chunked (via ``chunked_gated_linear``).

    Args:
        q, k: ``[B, T, H, K]`` (SSM ``C`` and ``B``); a batch dim of 1 broadcasts.
        v: ``[B, T, H, V]`` (the mixer input ``x``).
        log_decay: ``[B, T, H]`` or ``[B, T, H, K]``, ``<= 0``; None means no decay.
        lr: ``[B, T, H]`` write strength (Mamba2's ``dt``); None means 1.
        scale: multiplies q.
        initial_state: ``[B, H, K, V]`` or None (zeros).
        output_final_state: also return ``S_T``.
        chunk_size: a power of two; no effect on the result. The default is the
            memories' (`DEFAULT_CHUNK`), so that a mixer and its memory agree bit for bit.

    Returns:
        ``(o [B, T, H, V], S_T [B, H, K, V] or None)``.
    """
    batch = max(t.shape[0] for t in (q, k, v, log_decay, lr) if t is not None)
    length, heads = v.shape[1], v.shape[2]
    lead = (batch, length, heads)
    q, k, v = (t.expand(batch, *t.shape[1:]) for t in (q, k, v))
    rate = 1.0 if lr is None else lr.expand(lead)
    decay = None if log_decay is None else log_decay.expand(batch, *log_decay.shape[1:])
    memory = LINEAR_ATTENTION_MEMORY if decay is None else SSD_MEMORY
    o, mem_state = chunked_gated_linear(
        memory,
        q,
        k,
        v,
        lr=rate,
        decay=decay,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        chunk=chunk_size,
    )
    return o, (None if mem_state is None else mem_state.weights[0])


def segment_length(batch_heads: int, chunk_size: int) -> int:
    """Tokens per segment of the bidirectional scan: about ``SEGMENT_TOKEN_HEADS / (B H)``,
    a multiple of the chunk size, at least ``MIN_SEGMENT_CHUNKS`` chunks."""
    chunks = max(MIN_SEGMENT_CHUNKS, SEGMENT_TOKEN_HEADS // max(1, batch_heads * chunk_size))
    return chunks * chunk_size
