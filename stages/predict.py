"""Read handwriting: line images (files, folders, or a parquet of lines) -> text + confidence.

    python -m stages.predict models/model.ckpt scans/ line.png lines.parquet
    python -m stages.predict models/model.ckpt scans/ --decoder greedy --format csv -o out.csv

Needs only the model file (its charset and architecture travel inside it). Beam settings
come from the ``evaluate`` section of ``--params``. An unreadable input gets a one-line
error on stderr; the others are still read, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from pipeline.charlm import CharNgram
from pipeline.data import collate, decode_png, to_model_input
from pipeline.decoding import build_decoders
from pipeline.errors import PipelineError
from pipeline.lines import BadRow, normalize_image
from pipeline.lit_module import load_model
from pipeline.params import load_params
from stages._cli import run

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class Item:
    name: str  # file path, or "<parquet>:<row id>"
    image: bytes | None
    error: str | None = None


@dataclass(frozen=True)
class Prediction:
    name: str
    text: str | None
    confidence: float | None
    error: str | None


def iter_inputs(paths: list[Path]) -> Iterator[Item]:
    """Image files; folders (searched recursively for images); parquet files of lines."""
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                yield Item(str(path), None, "folder holds no image files")
            yield from iter_inputs(files)
        elif path.suffix.lower() == ".parquet":
            yield from _parquet_items(path)
        else:
            try:
                yield Item(str(path), path.read_bytes())
            except OSError as error:
                yield Item(str(path), None, error.strerror or str(error))


def _parquet_items(path: Path) -> Iterator[Item]:
    try:
        table = pq.read_table(path)
    except Exception as error:
        yield Item(str(path), None, f"cannot read parquet: {error}")
        return
    if "image" not in table.column_names:
        yield Item(str(path), None, f"no 'image' column (columns: {table.column_names})")
        return
    ids = table.column("id").to_pylist() if "id" in table.column_names else range(table.num_rows)
    for row_id, image in zip(ids, table.column("image").to_pylist(), strict=True):
        if isinstance(image, dict):  # hub layout: struct{bytes, path}
            image = image.get("bytes")
        yield Item(f"{path}:{row_id}", image)


def predict(
    model_path: Path,
    inputs: list[Path],
    decoder_name: str,
    params_path: Path,
    batch_size: int,
    lm_path: Path | None = None,
) -> list[Prediction]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = load_model(model_path).to(device)
    height = module.model.config.architecture.height
    params = load_params(params_path)
    if decoder_name == "beam_lm" and lm_path is None:
        raise PipelineError("--decoder beam_lm needs --lm (the lm stage writes models/lm.json)")
    lm = CharNgram.load(lm_path) if lm_path else None
    decoder = build_decoders(module.charset, params.evaluate, lm)[decoder_name]
    predictions: list[Prediction] = []
    pending: list[tuple[str, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        batch = collate(
            [
                {"image": image, "target": [], "text": "", "id": name, "writer": None}
                for name, image in pending
            ]
        )
        with torch.no_grad():
            widths = batch.widths.to(device)
            log_probs, _ = module.model(batch.images.to(device), widths)  # (T, B, K)
            lengths = module.model.output_lengths(widths)
            hypotheses = decoder(log_probs, lengths)
        for (name, _), hypothesis, frames in zip(
            pending, hypotheses, lengths.tolist(), strict=True
        ):
            confidence = float(torch.tensor(hypothesis.score / max(frames, 1)).exp())
            predictions.append(Prediction(name, hypothesis.text, round(confidence, 4), None))
        pending.clear()

    for item in iter_inputs(inputs):
        if item.error is None:
            try:
                png, _, _ = normalize_image(item.image, height, params.data.max_aspect_ratio)
            except BadRow as error:
                item = Item(item.name, None, f"{error.reason}: {error.detail}")
        if item.error is not None:
            predictions.append(Prediction(item.name, None, None, item.error))
            continue
        image = to_model_input(decode_png(png), height)  # (1, H, W)
        widest = max([image.shape[-1], *(pending_image.shape[-1] for _, pending_image in pending)])
        if pending and (len(pending) + 1) * height * widest > params.evaluate.max_batch_pixels:
            flush()  # one more line would take the batch past its memory bound
        pending.append((item.name, image))
        if len(pending) == batch_size:
            flush()
    flush()
    return predictions


def format_predictions(predictions: list[Prediction], output_format: str) -> str:
    readable = [p for p in predictions if p.error is None]
    if output_format == "json":
        return json.dumps([p.__dict__ for p in readable], ensure_ascii=False, indent=1) + "\n"
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["name", "text", "confidence"])
        writer.writerows([p.name, p.text, p.confidence] for p in readable)
        return buffer.getvalue()
    return "".join(f"{p.name}\t{p.confidence:.3f}\t{p.text}\n" for p in readable)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="model file written by the train stage")
    parser.add_argument(
        "inputs", type=Path, nargs="+", help="image files, folders or parquet files"
    )
    parser.add_argument("--decoder", choices=["greedy", "beam", "beam_lm"], default="beam")
    parser.add_argument("--lm", type=Path, help="character LM for beam_lm (models/lm.json)")
    parser.add_argument("--format", choices=["text", "csv", "json"], default="text")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="beam settings (evaluate)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    failed = 0

    def work() -> None:
        nonlocal failed
        predictions = predict(
            args.model, args.inputs, args.decoder, args.params, args.batch_size, args.lm
        )
        for prediction in predictions:
            if prediction.error is not None:
                failed += 1
                print(f"[predict] error: {prediction.name}: {prediction.error}", file=sys.stderr)
        text = format_predictions(predictions, args.format)
        if args.output:
            args.output.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
        if failed:
            print(
                f"[predict] {failed} of {len(predictions)} input(s) could not be read",
                file=sys.stderr,
            )

    run("predict", work)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
