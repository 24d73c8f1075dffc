"""``htr``: the project's commands outside the DVC pipeline.

    htr predict models/model.ckpt scans/            read lines (images, folders, parquet)
    htr report                                      what a change did to params and metrics
    htr export models/model.ckpt model.onnx         the model as ONNX (dynamic batch and width)

``htr <command> --help`` explains each. The pipeline itself runs with ``dvc repro``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = {
    "predict": "read handwriting: print or write the text of each line",
    "report": "markdown report of params and metrics, workspace (or an experiment) vs a base",
    "export": "write a trained model as ONNX",
}


def _export(argv: list[str]) -> None:
    from pipeline.command import run_command
    from pipeline.export import export_onnx

    parser = argparse.ArgumentParser(prog="htr export", description=COMMANDS["export"])
    parser.add_argument("model", type=Path, help="model file written by the train stage")
    parser.add_argument("out", type=Path, help="the .onnx file to write")
    args = parser.parse_args(argv)
    run_command("export", lambda: print(f"wrote {export_onnx(args.model, args.out)}"))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip() + "\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<8} {text}")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    if command == "predict":
        from pipeline.predict import main as predict

        sys.argv[0] = "htr predict"
        predict(rest)
    elif command == "report":
        from pipeline.report import main as report

        sys.argv[0] = "htr report"
        report(rest)
    else:
        _export(rest)


if __name__ == "__main__":
    main()
