"""The pictures the stages draw: augmentation grids (``preview``) and the worst test lines
with truth and prediction (``evaluate``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from pipeline.augment import Transform

ROW_HEIGHT = 64  # px each line is shown at, whatever the stored height
LABEL_WIDTH = 260
GAP = 6


def _shown(line: torch.Tensor) -> Image.Image:
    """(1, H, W) uint8 stored line -> a PIL image ``ROW_HEIGHT`` px high."""
    image = Image.fromarray(line[0].numpy(), "L")
    width = max(1, round(image.width * ROW_HEIGHT / image.height))
    return image.resize((width, ROW_HEIGHT), Image.Resampling.BILINEAR)


def augmentation_grid(
    lines: Sequence[tuple[str, torch.Tensor]], transform: Transform, variants: int, title: str
) -> Image.Image:
    """One row per (text, stored line): label, original, then ``variants`` augmented copies."""
    font = ImageFont.load_default(size=13)
    rows = [
        [_shown(image)] + [_shown(transform(image)) for _ in range(variants)] for _, image in lines
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


def worst_lines(rows: Sequence[dict], lines: Sequence[torch.Tensor], title: str) -> Image.Image:
    """Each prediction row (id, writer, truth, beam, beam_cer, greedy_cer) above its stored
    line ``(1, H, W)`` uint8: the picture people look at before the numbers."""
    font = ImageFont.load_default(size=14)
    images = [_shown(line) for line in lines]
    width = max([900, *(im.width + 20 for im in images)])
    block = ROW_HEIGHT + 3 * 18 + 14
    canvas = Image.new("RGB", (width, 30 + block * max(1, len(images))), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 6), title, fill="black", font=font)
    y = 30
    for row, image in zip(rows, images, strict=True):
        canvas.paste(image, (10, y))
        label = (
            f"{row['id']} ({row['writer']}): "
            f"beam CER {row['beam_cer']:.2f}, greedy CER {row['greedy_cer']:.2f}"
        )
        draw.text((10, y + ROW_HEIGHT + 2), label, fill="gray", font=font)
        draw.text((10, y + ROW_HEIGHT + 20), f"truth: {row['truth']}", fill="darkgreen", font=font)
        draw.text((10, y + ROW_HEIGHT + 38), f"beam:  {row['beam']}", fill="darkred", font=font)
        y += block
    return canvas
