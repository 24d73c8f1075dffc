"""Stage ``lm``: a character n-gram from the training split's texts -> the LM file, and its
size and cross-entropy on the validation texts (``pipeline/charlm.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.charlm import build_lm
from pipeline.command import run_command
from pipeline.layout import LinesFolder
from pipeline.params import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--lines", type=Path, required=True, help="lines folder")
    parser.add_argument("--out", type=Path, required=True, help="LM file to write")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args(argv)
    run_command(
        "lm",
        lambda: build_lm(
            load_params(args.params).lm.order, LinesFolder(args.lines), args.out, args.metrics
        ),
    )


if __name__ == "__main__":
    main()
