"""Pictures of the training augmentation: ``augment.png`` shows N training lines, each with
K variants of the full training augmentation; one more picture per enabled transform shows
it alone, always applied. Drawn with exactly the transforms training uses."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.augment import Transform, build_augmentation, transform_steps
from pipeline.figures import augmentation_grid
from pipeline.lines import atomic_directory, decode_png, read_split
from pipeline.params import Params

log = logging.getLogger(__name__)


def preview(params: Params, lines_path: Path, out_dir: Path) -> list[Path]:
    table = read_split(lines_path)
    rng = np.random.default_rng([params.seed, 3])
    picked = sorted(
        rng.choice(table.num_rows, size=min(params.preview.lines, table.num_rows), replace=False)
    )
    texts, images = table.column("text").to_pylist(), table.column("image").to_pylist()
    lines = [(texts[i], decode_png(images[i])) for i in picked]

    pictures: dict[str, tuple[Transform, str]] = {}
    augmentation = build_augmentation(params.augment)
    if augmentation is None:
        log.info("augmentation is off: the variants equal the original")
        augmentation = torch.nn.Identity()
    pictures["augment"] = (
        augmentation,
        f"training augmentation (each enabled transform with p={params.augment.probability})",
    )
    for name, step in transform_steps(params.augment):
        pictures[name] = (step, f"{name} alone, always applied")

    written = []
    with atomic_directory(out_dir) as scratch:
        for name, (transform, title) in pictures.items():
            torch.manual_seed(params.seed)  # same pictures on every run
            grid = augmentation_grid(lines, transform, params.preview.variants, title)
            grid.save(scratch / f"{name}.png")
            written.append(out_dir / f"{name}.png")
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written
