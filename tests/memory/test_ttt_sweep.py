"""chunked_minibatch_ttt against the reference over structures x retentions x learners x b."""

from __future__ import annotations

import itertools

import pytest
from test_ttt_helpers import RETENTIONS, build, compare


@pytest.mark.parametrize(
    "structure,retention,learner,b",
    list(itertools.product(["vector", "matrix", "mlp"], RETENTIONS, ["gd", "momentum"], [1, 3, 4])),
)
def test_forward_and_state_sweep(structure: str, retention: str, learner: str, b: int) -> None:
    compare(build(structure, retention, learner, b))
