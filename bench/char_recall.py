"""How many of the reference's occurrences of some characters a decoder reads right.

    python bench/char_recall.py RUN/predictions.parquet [RUN2/predictions.parquet ...] \
        --teacher models/pretrained.ckpt --decoder beam --split validation

Each line's prediction is aligned to its truth by edit distance (one minimal alignment);
a reference character counts as read when it is aligned to the same character. The
characters counted are those the teacher's charset lacks (``--teacher``: what fine-tuning
had to learn from the real lines alone, é è à ç ’ ... on poilus-b1) or ``--chars``.
A split's CER moves by thousandths from run to run; the new classes are a few percent of
its characters, so a change aimed at them shows here first.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.lit_module import read_checkpoint


def aligned_pairs(truth: str, prediction: str) -> list[tuple[int, int]]:
    """(truth index, prediction index) of the characters one minimal edit-distance
    alignment matches or substitutes."""
    rows, cols = len(truth) + 1, len(prediction) + 1
    cost = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        cost[i][0] = i
    for j in range(cols):
        cost[0][j] = j
    for i in range(1, rows):
        for j in range(1, cols):
            cost[i][j] = min(
                cost[i - 1][j] + 1,
                cost[i][j - 1] + 1,
                cost[i - 1][j - 1] + (truth[i - 1] != prediction[j - 1]),
            )
    pairs, i, j = [], len(truth), len(prediction)
    while i and j:
        if cost[i][j] == cost[i - 1][j - 1] + (truth[i - 1] != prediction[j - 1]):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def recall(rows: list[dict], decoder: str, chars: set[str]) -> tuple[Counter, Counter]:
    """Per character of ``chars``: occurrences in the truths, and how many were read."""
    total, read = Counter(), Counter()
    for row in rows:
        truth, prediction = row["truth"], row[decoder]
        total.update(ch for ch in truth if ch in chars)
        for i, j in aligned_pairs(truth, prediction):
            if truth[i] in chars and prediction[j] == truth[i]:
                read[truth[i]] += 1
    return total, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("predictions", type=Path, nargs="+", help="predictions.parquet files")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--teacher", type=Path, help="count the characters its charset lacks")
    which.add_argument("--chars", help="count these characters")
    parser.add_argument("--decoder", default="beam", help="greedy | beam | beam_lm")
    parser.add_argument("--split", default="validation")
    args = parser.parse_args()

    tables = {
        path: [r for r in pq.read_table(path).to_pylist() if r["split"] == args.split]
        for path in args.predictions
    }
    if args.chars is not None:
        chars = set(args.chars)
    else:
        known = set(read_checkpoint(args.teacher)[0]["charset"])
        chars = {ch for rows in tables.values() for r in rows for ch in r["truth"]} - known
    for path, rows in tables.items():
        total, read = recall(rows, args.decoder, chars)
        print(
            f"{path}: {args.split} {args.decoder}: {sum(read.values())} of "
            f"{sum(total.values())} read right "
            f"({sum(read.values()) / max(1, sum(total.values())):.1%})"
        )
        print("  " + " ".join(f"{ch}:{read[ch]}/{n}" for ch, n in total.most_common()))


if __name__ == "__main__":
    main()
