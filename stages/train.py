"""Stage ``train``: the CRNN on a lines folder -> the model file, DVCLive curves, quality
and speed metrics (``pipeline/training.py``). Resumable: an interrupted run continues from
its last checkpoint on the next ``dvc repro`` when params, data and code are unchanged."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.command import run_command
from pipeline.layout import LinesFolder
from pipeline.loader_server import start_loader_server
from pipeline.params import Params, load_params


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
    run_command("train", lambda: _train(load_params(args.params), args))


def _train(params: Params, args: argparse.Namespace) -> None:
    if params.train.num_workers:
        # before importing the training code: the server's own imports of torch and
        # Lightning then run beside ours, not after them (13 s on 2 cores)
        start_loader_server()
    from pipeline.training import TrainOutputs, train

    outputs = TrainOutputs(args.model, args.checkpoints, args.live, args.metrics, args.speed)
    train(params, LinesFolder(args.lines), outputs)


if __name__ == "__main__":
    main()
