"""Stage ``preview``: pictures of the training augmentation -> ``reports/preview/*.png``.

``augment.png`` shows N training lines, each with K variants of the full training
augmentation; one more picture per enabled transform shows it alone, always applied.
"""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pipeline.augment import Transform, build_augmentation, transform_steps
from pipeline.lines import atomic_directory, read_split
from pipeline.params import Params, load_params
from stages._cli import run

log = logging.getLogger(__name__)

ROW_HEIGHT = 64  # px each line is shown at, whatever the stored height
LABEL_WIDTH = 260
GAP = 6


def _to_tensor(png: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(png)) as image:
        return torch.from_numpy(np.array(image.convert("L")))[None]  # (1, H, W) uint8


def _to_image(tensor: torch.Tensor) -> Image.Image:
    image = Image.fromarray(tensor[0].numpy(), "L")
    width = max(1, round(image.width * ROW_HEIGHT / image.height))
    return image.resize((width, ROW_HEIGHT), Image.Resampling.BILINEAR)


def draw_grid(
    lines: Sequence[tuple[str, torch.Tensor]], transform: Transform, variants: int, title: str
) -> Image.Image:
    """One row per line: label, original, then ``variants`` augmented copies."""
    font = ImageFont.load_default(size=13)
    rows = [
        [_to_image(image)] + [_to_image(transform(image)) for _ in range(variants)]
        for _, image in lines
    ]
    cell = max(im.width for row in rows for im in row)
    header = ["original"] + [f"variant {k + 1}" for k in range(variants)]
    width = LABEL_WIDTH + (cell + GAP) * (variants + 1)
    height = 40 + (ROW_HEIGHT + 22 + GAP) * len(rows)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((GAP, 4), title, fill="black", font=font)
    for k, name in enumerate(header):
        draw.text((LABEL_WIDTH + k * (cell + GAP), 22), name, fill="navy", font=font)
    y = 40
    for (text, _), row in zip(lines, rows, strict=True):
        label = text if len(text) <= 34 else text[:33] + "…"
        draw.text((GAP, y + ROW_HEIGHT // 2 - 7), label, fill="black", font=font)
        for k, im in enumerate(row):
            grid.paste(im, (LABEL_WIDTH + k * (cell + GAP), y))
        y += ROW_HEIGHT + 22 + GAP
    return grid


def preview(params: Params, lines_path: Path, out_dir: Path) -> list[Path]:
    table = read_split(lines_path)
    rng = np.random.default_rng([params.seed, 3])
    picked = sorted(
        rng.choice(table.num_rows, size=min(params.preview.lines, table.num_rows), replace=False)
    )
    texts, images = table.column("text").to_pylist(), table.column("image").to_pylist()
    lines = [(texts[i], _to_tensor(images[i])) for i in picked]

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
            draw_grid(lines, transform, params.preview.variants, title).save(
                scratch / f"{name}.png"
            )
            written.append(out_dir / f"{name}.png")
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--lines", type=Path, default=Path("data/lines/train.parquet"))
    parser.add_argument("--out", type=Path, default=Path("reports/preview"))
    args = parser.parse_args(argv)
    run("preview", lambda: preview(load_params(args.params), args.lines, args.out))


if __name__ == "__main__":
    main()
