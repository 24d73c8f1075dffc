"""Stage ``lm``: a character n-gram from the training split's texts -> ``models/lm.json``,
and ``metrics/lm.json`` (its size and its cross-entropy on the validation texts, which it
never saw). Validation and test text never enter the model."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.charlm import CharNgram
from pipeline.lines import atomic_write_text, read_split
from pipeline.params import Params, load_params
from stages._cli import run

log = logging.getLogger(__name__)


def build_lm(params: Params, lines_dir: Path, model_path: Path, metrics_path: Path) -> dict:
    texts = read_split(lines_dir / "train.parquet").column("text").to_pylist()
    model = CharNgram.fit(texts, params.lm.order)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    validation = read_split(lines_dir / "validation.parquet").column("text").to_pylist()
    metrics = {
        "order": params.lm.order,
        "train_chars": sum(len(t) for t in texts),
        "contexts": len(model.counts),
        "validation_bits_per_char": round(model.bits_per_char(validation), 4),
    }
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    log.info("%d-gram of %d characters: %.3f bits/char on validation", params.lm.order,
             metrics["train_chars"], metrics["validation_bits_per_char"])  # fmt: skip
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--lines", type=Path, default=Path("data/lines"))
    parser.add_argument("--out", type=Path, default=Path("models/lm.json"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/lm.json"))
    args = parser.parse_args(argv)
    run("lm", lambda: build_lm(load_params(args.params), args.lines, args.out, args.metrics))


if __name__ == "__main__":
    main()
