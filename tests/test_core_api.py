"""`archdsl.core(spec, name)`: the kernel-level functional core, reached from a spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archdsl

ROOT = Path(__file__).resolve().parent.parent


def test_memory_core_from_a_spec_fills_fixed_gates_per_head_count() -> None:
    """RetNet's decay 1 - 2^(-5-h) comes from the spec and adapts to the inputs' heads."""
    f = archdsl.core(ROOT / "specs" / "retnet.arch", "memory")
    for heads in (2, 3):
        q, k, v = (torch.randn(1, 9, heads, 4, dtype=torch.float64) for _ in range(3))
        o, state = f(q, k, v, output_final_state=True)
        gamma = 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float64))
        w = torch.zeros(1, heads, 4, 4, dtype=torch.float64)
        expected = []
        for t in range(9):  # W_t = gamma W_{t-1} + k_t v_t^T; o_t = (q_t / 2) W_t
            w = gamma[None, :, None, None] * w + k[:, t, :, :, None] * v[:, t, :, None, :]
            expected.append(torch.einsum("bhd,bhde->bhe", q[:, t] * 4**-0.5, w))
        torch.testing.assert_close(o, torch.stack(expected, dim=1))
        torch.testing.assert_close(state, w)


def test_memory_core_backends_agree() -> None:
    spec = archdsl.load(ROOT / "specs" / "gated_deltanet.arch")
    fast, slow = archdsl.core(spec, "memory"), archdsl.core(spec, "memory", backend="reference")
    q, k, v = (torch.randn(2, 23, 2, 8, dtype=torch.float64) for _ in range(3))
    k = torch.nn.functional.normalize(k, dim=-1)
    lr = torch.rand(2, 23, 2, dtype=torch.float64)
    decay = -torch.rand(2, 23, 2, dtype=torch.float64)
    a, sa = fast(q, k, v, lr=lr, decay=decay, output_final_state=True)
    b, sb = slow(q, k, v, lr=lr, decay=decay, output_final_state=True)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(sa, sb)


def test_matrix_mixer_core_from_a_spec() -> None:
    spec = archdsl.load(ROOT / "specs" / "hydra.arch")
    fast, slow = archdsl.core(spec, "hydra_mixer"), archdsl.core(spec, "hydra_mixer", "reference")
    bsz, t, h, d, n = 1, 19, 2, 4, 3
    x = torch.randn(bsz, t, h, d, dtype=torch.float64)
    params = dict(
        c=torch.randn(bsz, t, h, n, dtype=torch.float64),
        b=torch.randn(bsz, t, h, n, dtype=torch.float64),
        log_a=-torch.rand(bsz, t, h, dtype=torch.float64),
        delta=torch.randn(bsz, t, h, dtype=torch.float64),
    )
    torch.testing.assert_close(fast(x, **params), slow(x, **params))


def test_core_names_the_missing_mixer() -> None:
    with pytest.raises(archdsl.ArchError, match="has no memory or mixer `memry`"):
        archdsl.core(ROOT / "specs" / "gla.arch", "memry")
