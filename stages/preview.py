"""Stage ``preview``: pictures of the training augmentation on a few training lines
(``pipeline/preview.py``), one per enabled transform and one of them all together."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.command import run_command
from pipeline.params import load_params
from pipeline.preview import preview


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--lines", type=Path, required=True, help="a split's parquet")
    parser.add_argument("--out", type=Path, required=True, help="folder for the pictures")
    args = parser.parse_args(argv)
    run_command("preview", lambda: preview(load_params(args.params), args.lines, args.out))


if __name__ == "__main__":
    main()
