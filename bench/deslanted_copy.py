"""A copy of a hub-layout folder of line images with each line's slant sheared upright: a
prototype of deslanting, to measure on the recipe before it enters the pipeline.

    python bench/deslanted_copy.py ../shared/data/poilus-b1 /tmp/poilus-b1-deslanted
    python bench/real.py /tmp/poilus-b1-deslanted --runs recipe --tag=-deslanted \
        --work /tmp/htr-real-deslanted      # its own --work: pulled lines are shared in one

Measured so (recipe-deslanted, README "Training on real handwriting"): validation beam a
little better, test worse on seven of nine writers; not adopted.

The slant of a line is the shear that makes its strokes most vertical: among shears of the
ink (tan of the angle, -1.6 to 0.8 in steps of 0.05: up to 58 degrees to the right, 39 to
the left), the one whose columns hold the longest unbroken vertical runs, counting only
runs of at least 35 % of the line's height (stems, ascenders, descenders) and their squared
lengths (a few long strokes outweigh many short ones). Runs along whole columns or
gradient directions gave 45 degrees on most cursive lines here (ligatures and upstrokes
lean too); long runs follow the downstrokes. Estimated at 64 px, applied at the stored
resolution; the width grows by the shear times the height, filled with the line's paper.
A line with no run that long at any shear gets shear 0, as 13 % of poilus-b1's validation
lines did (those and the truly upright ones): not sheared, only 1 px of paper added on each
side. Checked by shearing each validation line by a known 0.3 first: the estimate moves
by 0.3 +- 0.1 on 82 % of them (counting columns instead of squaring: 74 %).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

SHEARS = np.round(np.arange(-1.6, 0.8001, 0.05), 3)
ESTIMATE_HEIGHT = 64
MIN_RUN = 0.35  # of the height


def ink(gray: np.ndarray) -> np.ndarray:
    """Grey levels -> ink in [0, 1]: the 90th percentile is paper, the 2nd ink."""
    paper, dark = np.percentile(gray, 90), np.percentile(gray, 2)
    return np.clip((paper - gray) / max(paper - dark, 1.0), 0.0, 1.0)


def sheared(image: np.ndarray, shear: float, fill: float = 0.0) -> np.ndarray:
    """x' = x - shear * (y - h/2): a negative shear sets strokes leaning right upright. The
    width grows by |shear| * h so that nothing is cut."""
    height = image.shape[0]
    pad = int(np.ceil(abs(shear) * height / 2)) + 1
    padded = np.pad(image, ((0, 0), (pad, pad)), constant_values=fill)
    ys, xs = np.mgrid[0:height, 0 : padded.shape[1]].astype(np.float32)
    return ndimage.map_coordinates(
        padded, [ys, xs + shear * (ys - height / 2)], order=1, mode="constant", cval=fill
    )


def longest_vertical_runs(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool -> (w,) the longest run of True in each column."""
    best = np.zeros(mask.shape[1], np.int32)
    current = np.zeros(mask.shape[1], np.int32)
    for row in mask.astype(np.int32):
        current = (current + 1) * row
        np.maximum(best, current, out=best)
    return best


def slant(gray: np.ndarray) -> float:
    """The shear that sets the line's downstrokes upright (see the module's docstring)."""
    height, width = gray.shape
    small = np.asarray(
        Image.fromarray(gray).resize(
            (max(1, round(width * ESTIMATE_HEIGHT / height)), ESTIMATE_HEIGHT),
            Image.Resampling.BILINEAR,
        ),
        dtype=np.float32,
    )
    strokes = ink(small)
    scores = []
    for shear in SHEARS:
        runs = longest_vertical_runs(sheared(strokes, shear) > 0.5)
        long = runs[runs >= MIN_RUN * ESTIMATE_HEIGHT].astype(np.float64)
        scores.append((long**2).sum())
    if max(scores) == 0:
        return 0.0  # no stroke long enough at any shear to tell: leave the line as it is
    return float(SHEARS[int(np.argmax(scores))])


def deslanted(data: bytes) -> tuple[bytes, float]:
    with Image.open(io.BytesIO(data)) as opened:
        gray = np.asarray(opened.convert("L"))
    shear = slant(gray)
    paper = float(np.percentile(gray, 90))
    upright = sheared(gray.astype(np.float32), shear, fill=paper)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(upright + 0.5, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue(), shear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=Path, help="hub-layout folder: data/<split>*.parquet")
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    (args.target / "data").mkdir(parents=True, exist_ok=True)
    for path in sorted((args.source / "data").glob("*.parquet")):
        table = pq.read_table(path)
        images, shears = [], []
        for cell in tqdm(table.column("image").to_pylist(), desc=path.name, unit="line"):
            data, shear = deslanted(cell["bytes"])
            images.append({"bytes": data, "path": cell.get("path")})
            shears.append(shear)
        column = pa.array(images, type=table.schema.field("image").type)
        table = table.set_column(table.schema.get_field_index("image"), "image", column)
        pq.write_table(table, args.target / "data" / path.name)
        at_edge = np.isin(shears, SHEARS[[0, -1]]).mean()
        print(f"{path.name}: median shear {np.median(shears):+.2f}, {at_edge:.1%} at an end")


if __name__ == "__main__":
    main()
