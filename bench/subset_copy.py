"""A copy of a hub-layout folder with only a share of its training lines (the same share of
each writer's, the first ones in file order), validation and test untouched: one point of
a learning curve, to see how much more real lines would buy.

    python bench/subset_copy.py ../shared/data/poilus-b1 /tmp/poilus-b1-half --fraction 0.5
    python bench/real.py /tmp/poilus-b1-half --runs recipe-e80 --tag=-half \\
        --work /tmp/htr-real-half        # its own --work: pulled lines are shared in one
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
from _runs import training_parquets  # bench/ is on the path of its scripts


def kept_rows(writers: list[str | None], fraction: float) -> list[int]:
    """The row indices kept: the first ``ceil(fraction x n)`` of each writer's ``n`` rows
    (rows without a writer count as one writer), in the file's order."""
    rows: dict[str | None, list[int]] = defaultdict(list)
    for index, writer in enumerate(writers):
        rows[writer].append(index)
    kept = [i for indices in rows.values() for i in indices[: math.ceil(fraction * len(indices))]]
    return sorted(kept)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--fraction", type=float, required=True)
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        raise SystemExit(f"--fraction must be in (0, 1], got {args.fraction}")
    for path, out in training_parquets(args.source, args.target):
        table = pq.read_table(path)
        writers = (
            table.column("writer").to_pylist()
            if "writer" in table.column_names
            else [None] * table.num_rows
        )
        kept = table.take(kept_rows(writers, args.fraction))
        pq.write_table(kept, out)
        print(f"{path.name}: {kept.num_rows} of {table.num_rows} lines")


if __name__ == "__main__":
    main()
