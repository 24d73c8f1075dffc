"""Test-time augmentation, measured: the network reads each line as stored and as a few
deterministic variants of the same width (sheared, thickened, thinned, scaled about the
centre); the variants' posteriors are averaged frame by frame and then decoded by each of
the params' decoders. Choose on validation.

    python bench/tta.py MODEL LINES --params RUN/params.yaml --lm RUN/lm.json

Prints CER per set of variants (each variant alone first).
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from _runs import read_split_from_args  # bench/ is on the path of its scripts
from torchmetrics.functional.text import char_error_rate

from pipeline.augment import PAPER, morphology


def _affine(shear: float = 0.0, scale: float = 1.0):
    return lambda image: TF.affine(
        image, angle=0.0, translate=[0, 0], scale=scale, shear=[shear, 0.0], fill=PAPER
    )


VARIANTS = {
    "as stored": lambda image: image,
    "shear -10°": _affine(shear=-10.0),
    "shear +10°": _affine(shear=10.0),
    "scale 0.9": _affine(scale=0.9),
    "scale 1.1": _affine(scale=1.1),
    "thicker": lambda image: morphology(image, 2, thicker=True),
    "thinner": lambda image: morphology(image, 2, thicker=False),
}
SETS = [
    ["as stored", "shear -10°", "shear +10°"],
    ["as stored", "thicker", "thinner"],
    ["as stored", "scale 0.9", "scale 1.1"],
    list(VARIANTS),
]


def main() -> None:
    recognizer, dataset = read_split_from_args(__doc__)
    # every variant keeps the line's width, so its frames line up with the stored line's;
    # the dataset reads each line through it as training reads through the augmentation
    emissions: dict[str, list] = {}
    for name, variant in VARIANTS.items():
        dataset.augmentation = variant
        emissions[name] = list(
            recognizer.emissions(lambda i: dataset[i]["image"], dataset.widths, progress=name)
        )
    batches = [(indices, frames) for indices, _, frames, _ in emissions["as stored"]]
    truths = [dataset.texts[i] for indices, _ in batches for i in indices]

    print(f"| variants | {' | '.join(recognizer.decoders)} |")
    print(f"|---|{'---|' * len(recognizer.decoders)}")
    for names in [[name] for name in VARIANTS] + SETS:
        means = [  # (T, B, K) per batch: the variants' probabilities averaged
            torch.logsumexp(torch.stack([emissions[n][b][1] for n in names]), dim=0)
            - math.log(len(names))
            for b in range(len(batches))
        ]
        cers = []
        for decoder in recognizer.decoders.values():
            texts = [
                h.text
                for mean, (_, frames) in zip(means, batches, strict=True)
                for h in decoder(mean, frames)
            ]
            cers.append(f"{float(char_error_rate(texts, truths)):.4f}")
        print(f"| {' + '.join(names)} | {' | '.join(cers)} |", flush=True)


if __name__ == "__main__":
    main()
