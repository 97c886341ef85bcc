"""Shared test setup: golden-file regeneration flag, and the Triton interpreter on CPU."""

from __future__ import annotations

import os

import pytest

# Generated Triton kernels run through the interpreter on CPU-only machines. It must be
# set before triton is first imported anywhere in the test session.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/ from the current compiler output (review the diff!)",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return (
        bool(request.config.getoption("--update-golden"))
        or os.environ.get("ARCHDSL_UPDATE_GOLDEN") == "1"
    )
