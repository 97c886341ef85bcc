"""Functional cores of the matrix mixers: ``core_for_mixer(mixer, backend)``.

The returned callable takes ``x [B, T, H, D]`` and the class's parameters as keywords
(see `archdsl.mixers.registry` and each class's module docstring) and returns
``[B, T, H, D]``. Backends: ``"torch"`` the fast structured path; ``"reference"``
``materialize() @ x``, the universal oracle. A semiseparable mixer with ``kernel =
selective`` is Mamba's S6 scan (parameters ``dt, a, b, c, d``, per-channel matrices; see
`archdsl.mixers.selective_scan`).

    >>> import torch
    >>> from archdsl.ir.mixers import MatrixMixer
    >>> f = core_for_mixer(MatrixMixer(name="m", cls="lowrank"), backend="reference")
    >>> x, q, k = torch.randn(1, 5, 2, 3), torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 4)
    >>> fast = core_for_mixer(MatrixMixer(name="m", cls="lowrank"), backend="torch")
    >>> torch.allclose(f(x, q=q, k=k), fast(x, q=q, k=k), atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from archdsl.ir.mixers import MatrixMixer
from archdsl.mixers.registry import MixerImpl, implementation

BACKENDS = ("torch", "reference")


def core_for_mixer(mixer: MatrixMixer, backend: str = "torch") -> Callable[..., Tensor]:
    """The functional core of ``mixer`` on ``backend`` (``"torch"`` or ``"reference"``)."""
    impl = implementation(mixer.cls, mixer.data, mixer.kernel)
    causal = mixer.direction == "causal"
    if mixer.kernel == "selective" and not causal:
        raise ValueError(
            f"mixer '{mixer.name}': the selective scan (kernel = selective) is causal; "
            "for a bidirectional mixer use cls = quasiseparable (Hydra)"
        )
    if backend == "torch":
        return _fast(impl, causal)
    if backend == "reference":
        return _reference(impl, causal)
    raise ValueError(f"unknown backend {backend!r} for mixer '{mixer.name}'; use one of {BACKENDS}")


def _fast(impl: MixerImpl, causal: bool) -> Callable[..., Tensor]:
    def run(x: Tensor, **params: Any) -> Tensor:
        return impl.fast(x, causal=causal, **params)

    run.__doc__ = impl.fast.__doc__
    return run


def _reference(impl: MixerImpl, causal: bool) -> Callable[..., Tensor]:
    def run(x: Tensor, **params: Any) -> Tensor:
        return impl.apply(impl.materialize(x.shape[1], causal=causal, **params), x)

    run.__doc__ = impl.materialize.__doc__
    return run
