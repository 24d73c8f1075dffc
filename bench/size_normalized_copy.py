"""A copy of a hub-layout folder with each line cut to its own ink band: a prototype of size
normalization, to measure on the recipe before it enters the pipeline.

    python bench/size_normalized_copy.py ../shared/data/poilus-b1 /tmp/poilus-b1-sizenorm
    python bench/real.py /tmp/poilus-b1-sizenorm --runs recipe --tag=-sizenorm \
        --work /tmp/htr-real-sizenorm       # its own --work: pulled lines are shared in one

Measured so (recipe-sizenorm, README "Training on real handwriting"): validation beam CER
0.016 worse than the recipe on the same host and teacher, test 0.077 worse, worse on 14 of
the 16 writers; not adopted.

Crops cut from page boxes hold writing of very different sizes and often their neighbours'
ink. A line's ink rows are those of the densest band near the crop's middle (the box was
drawn around it) and ``WINDOW`` of the height either side, less what every row holds (a
margin's vertical rule); their ink-weighted median row is the line's middle and their
interquartile range its spread (about half the x-height). The line is cut to ``spreads``
of them above and below its middle, padded with its paper where that runs past the crop.
The default 3.75 keeps poilus-b1's median training line at its scale (its spread is 0.133
of the crop's height).
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

WINDOW = 0.35  # of the height, each side of the densest row


def ink(gray: np.ndarray) -> np.ndarray:
    """Grey levels -> ink in [0, 1]: the 90th percentile is paper, the 2nd ink."""
    paper, dark = np.percentile(gray, 90), np.percentile(gray, 2)
    return np.clip((paper - gray) / max(paper - dark, 1.0), 0.0, 1.0)


def ink_rows(gray: np.ndarray) -> tuple[float, float] | None:
    """(middle row, spread in rows) of the ink of the line nearest the crop's middle: the
    ink-weighted median row and interquartile range, over the rows within ``WINDOW`` of
    the height from the densest row near the middle (the neighbours' cores lie further)."""
    height = gray.shape[0]
    mass = (ink(gray.astype(np.float32)) > 0.5).sum(axis=1).astype(np.float64)
    # what every row holds (a margin's vertical rule, a dark edge) says nothing of the line
    mass = np.maximum(mass - np.percentile(mass, 10), 0.0)
    smooth = ndimage.gaussian_filter1d(mass, sigma=height / 32)
    rows = np.arange(height)
    nearness = np.exp(-0.5 * ((rows - height / 2) / (height / 3)) ** 2)
    peak = int(np.argmax(smooth * nearness))
    mass[np.abs(rows - peak) > WINDOW * height] = 0.0
    if mass.sum() <= 0:
        return None
    cumulative = np.cumsum(mass) / mass.sum()
    q25, q50, q75 = np.searchsorted(cumulative, [0.25, 0.5, 0.75])
    return float(q50), float(max(q75 - q25, 1))


def normalized(data: bytes, spreads: float) -> tuple[bytes, float]:
    """The line cut to ``spreads`` ink spreads above and below its ink's middle row; (PNG,
    the spread's share of the input's height)."""
    with Image.open(io.BytesIO(data)) as opened:
        gray = np.asarray(opened.convert("L"))
    height, width = gray.shape
    found = ink_rows(gray) if width > height else None  # tall crops: margin writing
    if found is None:
        return data, float("nan")
    middle, spread = found
    spread = min(max(spread, height * 0.04), height * 0.3)
    start = round(middle - spreads * spread)
    stop = round(middle + spreads * spread)
    paper = np.uint8(np.percentile(gray, 90))
    out = np.full((stop - start, width), paper, np.uint8)
    src_start, src_stop = max(start, 0), min(stop, height)
    out[src_start - start : src_stop - start] = gray[src_start:src_stop]
    buffer = io.BytesIO()
    Image.fromarray(out).save(buffer, format="PNG")
    return buffer.getvalue(), spread / height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=Path, help="hub-layout folder: data/<split>*.parquet")
    parser.add_argument("target", type=Path)
    parser.add_argument("--spreads", type=float, default=3.75, help="ink spreads each side")
    args = parser.parse_args()
    (args.target / "data").mkdir(parents=True, exist_ok=True)
    for path in sorted((args.source / "data").glob("*.parquet")):
        table = pq.read_table(path)
        images, shares = [], []
        for cell in tqdm(
            table.column("image").to_pylist(), desc=path.name, unit="line", mininterval=5
        ):
            data, share = normalized(cell["bytes"], args.spreads)
            images.append({"bytes": data, "path": cell.get("path")})
            shares.append(share)
        column = pa.array(images, type=table.schema.field("image").type)
        table = table.set_column(table.schema.get_field_index("image"), "image", column)
        pq.write_table(table, args.target / "data" / path.name)
        quartiles = np.nanpercentile(shares, [25, 50, 75])
        print(f"{path.name}: ink spread share of the crop, quartiles {np.round(quartiles, 3)}")


if __name__ == "__main__":
    main()
