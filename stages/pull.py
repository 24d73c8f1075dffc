"""Stage ``pull``: the configured line dataset -> a lines folder (three split parquets and
the charset) and ``metrics/data.json`` (lines kept, dropped by reason, cleaned)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.command import run_command
from pipeline.params import load_params
from pipeline.pull import pull


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="lines folder to write")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args(argv)
    run_command("pull", lambda: pull(load_params(args.params), args.out, args.metrics))


if __name__ == "__main__":
    main()
