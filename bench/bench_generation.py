"""Generation: ``model.step`` (streamed states) vs re-running the whole sequence per token.

Prints a table (no asserts): for each spec, a small model (CPU, float32) reads a prompt
with one ``extend`` call, then generates ``new`` tokens greedily with ``step``; the same
tokens are then produced by calling the model on the whole growing sequence for every
new token (what a model without a recurrent form has to do). Both must pick the same
tokens (checked), and the per-token times are compared. Attention keeps a key/value
cache, so its step still grows with the length; memories and recurrent mixers do not.

    python bench/bench_generation.py [--prompt 512] [--new 32] [--specs mamba2 ...]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

import archdsl
from archdsl.runtime.streaming import StreamingModel

ROOT = Path(__file__).resolve().parent.parent
SIZES = dict(d_model=256, heads=4, layers=4, vocab=1000)
DEFAULT_SPECS = [
    "mamba2",
    "gated_deltanet",
    "gla",
    "retnet",
    "mamba",
    "s4d",
    "hyena",
    "transformer",
    "titans",
    "titans_mac",
]


def build(spec: str) -> StreamingModel:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = archdsl.build(ROOT / "specs" / f"{spec}.arch", **SIZES).eval()
    assert isinstance(model, StreamingModel)
    return model


def generate_streamed(
    model: StreamingModel, prompt: torch.Tensor, new: int
) -> tuple[torch.Tensor, float, float]:
    """Greedy tokens and seconds: (prompt via extend, per generated token via step)."""
    stream = model.begin(prompt.shape[0])
    start = time.perf_counter()
    logits = model.extend(prompt, stream)[:, -1]
    prefill = time.perf_counter() - start
    tokens = []
    start = time.perf_counter()
    for _ in range(new):
        token = logits.argmax(-1)
        tokens.append(token)
        logits = model.step(token, stream)
    return torch.stack(tokens, 1), prefill, (time.perf_counter() - start) / new


def generate_recomputed(
    model: StreamingModel, prompt: torch.Tensor, new: int
) -> tuple[torch.Tensor, float]:
    """Greedy tokens and seconds per token, calling the model on the whole sequence."""
    seq = prompt
    start = time.perf_counter()
    for _ in range(new):
        token = model(seq)[:, -1].argmax(-1)
        seq = torch.cat([seq, token[:, None]], dim=1)
    return seq[:, prompt.shape[1] :], (time.perf_counter() - start) / new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--specs", nargs="+", default=DEFAULT_SPECS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{SIZES}, batch 1, prompt {args.prompt}, {args.new} new tokens, float32, "
        f"threads={torch.get_num_threads()}; ms"
    )
    print(f"{'spec':16} {'prefill':>9} {'step / token':>13} {'recompute / token':>18} {'ratio':>7}")
    for spec in args.specs:
        model = build(spec)
        prompt = torch.randint(0, SIZES["vocab"], (1, args.prompt))
        with torch.no_grad():
            generate_streamed(model, prompt[:, :16], 2)  # warm-up
            streamed, prefill, per_step = generate_streamed(model, prompt, args.new)
            again, per_full = generate_recomputed(model, prompt, args.new)
        same = "" if torch.equal(streamed, again) else "  (tokens differ!)"
        print(
            f"{spec:16} {prefill * 1e3:9.1f} {per_step * 1e3:13.2f} {per_full * 1e3:18.1f} "
            f"{per_full / per_step:6.1f}x{same}",
            flush=True,
        )


if __name__ == "__main__":
    main()
