"""Lines/s one process prepares for training (decode, augmentation, normalization): how many
DataLoader processes (``train.num_workers``) a fast GPU needs to be fed.

    python bench/loader_speed.py /tmp/htr-real/lines-h128 --lines 150

The lines folder is a pulled one (``pull`` stage output); the augmentation is params.yaml's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _runs import ROOT  # bench/ is on the path of its scripts

from pipeline.augment import build_augmentation
from pipeline.charset import Charset
from pipeline.data import LineDataset
from pipeline.layout import LinesFolder
from pipeline.lines import read_split
from pipeline.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("lines", type=Path, help="a pulled lines folder")
    parser.add_argument("--lines", dest="count", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in one DataLoader process
    folder = LinesFolder(args.lines)
    params = load_params(ROOT / "params.yaml")
    charset = Charset.load(folder.charset)
    height = read_split(folder.split("train")).column("height")[0].as_py()  # as pulled
    for augment in (True, False):
        augmentation = build_augmentation(params.augment) if augment else None
        dataset = LineDataset(folder.split("train"), charset, height, augmentation)
        count = min(args.count, len(dataset))
        torch.manual_seed(0)
        start = time.perf_counter()
        for i in range(count):
            dataset[i]
        seconds = time.perf_counter() - start
        result = {"height": height, "augment": augment, "lines": count,
                  "lines_per_second": round(count / seconds, 1)}  # fmt: skip
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
