"""Stage ``train``: the CRNN on a lines folder -> the model file, DVCLive curves, quality
and speed metrics (``pipeline/training.py``). Resumable: an interrupted run continues from
its last checkpoint on the next ``dvc repro`` when params, data and code are unchanged."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.command import run_command
from pipeline.layout import LinesFolder
from pipeline.params import load_params
from pipeline.training import TrainOutputs, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--lines", type=Path, required=True, help="lines folder")
    parser.add_argument("--model", type=Path, required=True, help="model file to write")
    parser.add_argument("--checkpoints", type=Path, required=True, help="kept between runs")
    parser.add_argument("--live", type=Path, required=True, help="DVCLive folder")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--speed", type=Path, required=True)
    args = parser.parse_args(argv)
    outputs = TrainOutputs(args.model, args.checkpoints, args.live, args.metrics, args.speed)
    run_command("train", lambda: train(load_params(args.params), LinesFolder(args.lines), outputs))


if __name__ == "__main__":
    main()
