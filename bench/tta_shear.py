"""Slanted versions in the joint choice, measured: the pipeline reads each line at the sizes of
`evaluate.scales` and keeps, of the texts its decoders found, the one all versions together
find likeliest (recognizer.joint_choice). Here the pool also holds the line as stored sheared
left and right (x' = x - k (H/2 - y), the line widened so no ink is cut): hands differ in
slant as much as in size. Choose on validation.

    python bench/tta_shear.py MODEL LINES --params RUN/params.yaml --lm RUN/lm.json \
        --shears 0.15 0.3

Prints CER per decoder for each set of versions: the sizes alone (the pipeline's rule), the
line as stored with each pair of shears, and the sizes with each pair of shears; then the
decoding seconds of the versions.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from _runs import read_split_from_args  # bench/ is on the path of its scripts
from torchmetrics.functional.text import char_error_rate

from pipeline.recognizer import joint_choice, rescaled

SCALES = (0.8, 0.9, 1.0, 1.1, 1.25)


def sheared(line: torch.Tensor, k: float) -> torch.Tensor:
    """``(1, H, W)`` (ink 1, paper 0) sheared by ``k`` (positive: the top moves left), as
    ``(1, H, W + ceil(|k| H))``."""
    if k == 0.0:
        return line
    _, height, width = line.shape
    extra = math.ceil(abs(k) * height)
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width + extra, dtype=torch.float32) + 0.5
    source_x = xs[None, :] - extra / 2 + k * (height / 2 - ys[:, None])  # (H, W')
    grid = torch.stack(
        [source_x / width * 2 - 1, (ys[:, None] / height * 2 - 1).expand_as(source_x)], dim=-1
    )
    return F.grid_sample(line[None], grid[None], align_corners=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--shears", type=float, nargs="+", default=[0.15, 0.3])
    shears, rest = parser.parse_known_args()
    recognizer, dataset = read_split_from_args(__doc__, rest)
    truths, n, decoders = dataset.texts, len(dataset), list(recognizer.decoders)
    # (scale, shear) pairs; the line as stored first, as the pipeline pools its versions
    stored = [(1.0, 0.0)]
    sizes = stored + [(s, 0.0) for s in SCALES if s != 1.0]
    slants = [(1.0, sign * k) for k in shears.shears for sign in (1, -1)]
    seconds: dict[tuple[float, float], float] = {}
    found = {}  # version -> (readings by decoder, each line's log_probs)
    for scale, shear in sizes + slants:
        start = time.perf_counter()

        def line(i: int, s: float = scale, k: float = shear) -> torch.Tensor:
            return sheared(rescaled(dataset[i]["image"], s), k)

        # what rescaled and sheared make of each width, without preparing the line twice
        widening = math.ceil(abs(shear) * recognizer.height) if shear else 0
        widths = [max(1, round(w * scale)) + widening for w in dataset.widths]
        found[scale, shear] = recognizer.read_version(
            line, widths, decoders, defaultdict(float), f"x{scale:g} shear {shear:g}", keep=True
        )()
        seconds[scale, shear] = time.perf_counter() - start

    def joint(chosen: list[tuple[float, float]], name: str) -> str:
        texts = []
        for i in range(n):
            read = [(found[v][0][name][i], found[v][1][i]) for v in chosen]
            texts.append(joint_choice(read, recognizer.decoders[name], recognizer.charset).text)
        return f"{float(char_error_rate(texts, truths)):.4f}"

    sets = {"as stored": stored, "five sizes (the pipeline)": sizes}
    for k in shears.shears:
        pair = [(1.0, k), (1.0, -k)]
        sets[f"as stored, shears +-{k:g}"] = stored + pair
        sets[f"five sizes, shears +-{k:g}"] = sizes + pair
    if len(shears.shears) > 1:
        sets["five sizes, every shear"] = sizes + slants
    print(f"| versions | {' | '.join(decoders)} |")
    print(f"|---|{'---|' * len(decoders)}")
    for label, chosen in sets.items():
        print(f"| {label} | {' | '.join(joint(chosen, d) for d in decoders)} |", flush=True)
    print("seconds per version (network and decoders):")
    for version, spent in seconds.items():
        print(f"  scale {version[0]:g} shear {version[1]:g}: {spent:.1f}")


if __name__ == "__main__":
    main()
