"""Stage ``evaluate``: greedy, beam (and beam_lm with ``--lm``) CER/WER on the validation
and test splits, with the speed of each decoder, every line's prediction, CER per writer
and per length, and a picture of the worst test lines (``pipeline/evaluation.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.command import run_command
from pipeline.evaluation import EvaluationOutputs, evaluate
from pipeline.layout import LinesFolder
from pipeline.params import load_params
from pipeline.recognizer import Recognizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--lm", type=Path, help="character LM: adds the beam_lm decoder")
    parser.add_argument("--lines", type=Path, required=True, help="lines folder")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--speed", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--worst", type=Path, required=True)
    args = parser.parse_args(argv)

    def work() -> None:
        params = load_params(args.params)
        outputs = EvaluationOutputs(
            args.metrics, args.speed, args.predictions, args.plots, args.worst
        )
        with Recognizer.load(
            args.model, lm=args.lm, params=params, decode_processes=params.evaluate.decode_processes
        ) as recognizer:
            evaluate(recognizer, LinesFolder(args.lines), outputs, params.evaluate.worst_lines)

    run_command("evaluate", work)


if __name__ == "__main__":
    main()
