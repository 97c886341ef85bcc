"""Mixer tests run single-threaded: on a shared, oversubscribed CPU, torch's intra-op
threads spin-wait and make these small float64 problems 10-100x slower."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
