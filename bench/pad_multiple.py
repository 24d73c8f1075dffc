"""What a batch's padded width costs a CPU training step: the network's forward, backward
and AdamW step on batches whose width changes every step (drawn from the range a model's
lines span) and is rounded up to a multiple of 1, 8, 16, 32 or 64 px, against one fixed
width. Times are per step at the range's middle width (each step's time scaled by
middle / its width), one compute thread as the stages use, each config in this process.

A CPU convolution (oneDNN) prepares its kernels for each new input shape: with widths that
vary step to step, that work is paid again and again; rounded widths repeat.

    python bench/pad_multiple.py            # writes bench/results/pad_multiple.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the stages set it

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.model import CRNN, ModelConfig
from pipeline.params import load_params, padded_width

CLASSES = 90
# (preset, input_norm, batch size, narrowest and widest px of a batch): the default model on
# the embedded 32 px lines and the real-handwriting recipe on poilus-b1's 64 px lines
# (their padded training batches span about these widths)
CONFIGS = [("cpu", "none", 16, 150, 450), ("cpu64", "contrast", 4, 350, 950)]
MULTIPLES = [1, 8, 16, 32, 64]


def measure(
    preset: str,
    norm: str,
    batch: int,
    low: int,
    high: int,
    multiple: int | None,
    steps: int,
    bf16: bool = False,
) -> float:
    """Seconds per step; ``bf16``: the forward under CPU bf16 autocast, as Lightning's
    ``bf16-mixed`` runs it (weights, gradients and AdamW in fp32)."""
    params = load_params()
    torch.manual_seed(0)
    network = CRNN(ModelConfig(params.model.presets[preset], "max", True, norm, CLASSES))
    optimizer = torch.optim.AdamW(network.parameters())
    ctc = torch.nn.CTCLoss(zero_infinity=True)
    draw = random.Random(0)
    middle = (low + high) // 2
    height = params.model.presets[preset].height
    times = []
    for _ in range(steps):
        width = middle if multiple is None else draw.randint(low, high)
        if multiple:
            width = padded_width(width, multiple)
        images = torch.rand(batch, 1, height, width)  # (B, 1, H, W)
        widths = torch.full((batch,), width)
        targets = torch.randint(1, CLASSES, (batch, 20))
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            log_probs, shortcut = network(images, widths)  # (T, B, K) each, fp32
        frames = torch.full((batch,), log_probs.shape[0])
        lengths = torch.full((batch,), 20)
        loss = ctc(log_probs, targets, frames, lengths) + 0.1 * ctc(
            shortcut, targets, frames, lengths
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append((time.perf_counter() - started) * middle / width)
    return statistics.mean(times[steps // 5 :])  # the first fifth: allocator warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "pad_multiple.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for preset, norm, batch, low, high in CONFIGS:
        for multiple in [None, *MULTIPLES]:
            ms = 1000 * measure(preset, norm, batch, low, high, multiple, args.steps)
            row = {
                "preset": preset,
                "batch": batch,
                "widths": "fixed" if multiple is None else f"{low}-{high}, multiple of {multiple}",
                "ms_per_step": round(ms, 1),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    # the training-loop A/B beside it (README "Benchmarks") is kept
    args.out.write_text(json.dumps(previous | {"network_step": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
