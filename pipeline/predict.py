"""Read handwriting: line images (files, folders, or a parquet of lines) -> text + confidence.

    htr predict models/model.ckpt scans/ line.png lines.parquet
    htr predict models/model.ckpt scans/ --decoder greedy --format csv -o out.csv
    htr predict models/model.ckpt scans/ --decoder beam_lm --lm models/lm.json
    htr predict models/model.ckpt pages/ --pages-out pages-read/   # ALTO / PAGE written back

Needs only the model file (its charset and architecture travel inside it). Beam settings
come from the ``evaluate`` section of ``--params`` (the project's params.yaml by default).
An unreadable input gets a one-line error on stderr; the others are still read, and the
exit code is 1. Lines are read in batches of similar width, on the GPU when there is one.
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

from pipeline.command import run_command
from pipeline.errors import PipelineError
from pipeline.layout import PROJECT_PARAMS
from pipeline.lines import BadRow
from pipeline.pages import find_page_files, page_lines_to_read, write_back
from pipeline.params import load_params
from pipeline.recognizer import Recognizer

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


def _recognizer(model_path: Path, params_path: Path, lm_path: Path | None) -> Recognizer:
    """The recognizer both readers use: the beam searches in ``evaluate.decode_processes``."""
    params = load_params(params_path)
    return Recognizer.load(
        model_path, lm=lm_path, params=params, decode_processes=params.evaluate.decode_processes
    )


def predict(
    model_path: Path,
    inputs: list[Path],
    decoder_name: str,
    params_path: Path,
    lm_path: Path | None = None,
) -> list[Prediction]:
    """One prediction per input line, in input order; unreadable ones carry their error."""
    if decoder_name == "beam_lm" and lm_path is None:
        raise PipelineError("--decoder beam_lm needs --lm (the lm stage writes models/lm.json)")
    recognizer = _recognizer(model_path, params_path, lm_path)
    names: list[str] = []
    errors: dict[int, str] = {}
    stored: list[tuple[bytes, int]] = []  # PNGs at the model's height: the source bytes go
    for index, item in enumerate(iter_inputs(inputs)):
        names.append(item.name)
        try:
            if item.error is not None:
                raise BadRow("unreadable", item.error)
            stored.append(recognizer.stored_line(item.image))
        except BadRow as error:
            errors[index] = item.error or f"{error.reason}: {error.detail}"
    with recognizer:
        read = recognizer.read_stored(stored, [decoder_name], progress="predict")
    readings = iter(read.by_decoder[decoder_name])
    predictions = []
    for index, name in enumerate(names):
        if index in errors:
            predictions.append(Prediction(name, None, None, errors[index]))
            continue
        reading = next(readings)
        predictions.append(Prediction(name, reading.text, round(reading.confidence, 4), None))
    return predictions


def _page_files(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(XML file, its folder of pages) for folders of pages and single XML files."""
    found = []
    for path in inputs:
        if path.is_dir():
            found += [(xml, path) for xml in find_page_files(path)]
        else:
            found.append((path, path.parent))
    return found


def predict_pages(
    model_path: Path,
    inputs: list[Path],
    decoder_name: str,
    params_path: Path,
    out_dir: Path,
    lm_path: Path | None = None,
) -> list[Prediction]:
    """Read every line of pages (ALTO or PAGE XML beside their images; lines from the XML,
    their text ignored) and write a copy of each XML under ``out_dir`` (same relative path)
    with the recognized text. One prediction per line, named ``<xml>:<line id>``."""
    if decoder_name == "beam_lm" and lm_path is None:
        raise PipelineError("--decoder beam_lm needs --lm (the lm stage writes models/lm.json)")
    recognizer = _recognizer(model_path, params_path, lm_path)
    predictions: list[Prediction] = []
    pages, stored, owners = [], [], []
    for xml, folder in _page_files(inputs):
        try:
            page, crops, problems = page_lines_to_read(xml)
        except BadRow as error:
            predictions.append(Prediction(str(xml), None, None, f"{error.reason}: {error.detail}"))
            continue
        for line_id, png in crops:
            try:
                stored.append(recognizer.stored_line(png))
                owners.append((len(pages), line_id))
            except BadRow as error:
                problems[line_id] = str(error)
        pages.append((page, xml.relative_to(folder), problems, {}))
    with recognizer:
        read = recognizer.read_stored(stored, [decoder_name], progress="predict")
    for (index, line_id), reading in zip(owners, read.by_decoder[decoder_name], strict=True):
        pages[index][3][line_id] = (reading.text, round(reading.confidence, 4))
    for page, relative, problems, readings in pages:
        write_back(page, readings, out_dir / relative)
        for line in page.lines:
            name = f"{page.xml}:{line.id}"
            if line.id in readings:
                text, confidence = readings[line.id]
                predictions.append(Prediction(name, text, confidence, None))
            else:
                predictions.append(Prediction(name, None, None, problems[line.id]))
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
    parser.add_argument(
        "--decoder",
        choices=["greedy", "beam", "beam_lm"],
        default="beam",
        help="beam_lm adds the character LM and needs --lm (default: %(default)s)",
    )
    parser.add_argument("--lm", type=Path, help="character LM for beam_lm (models/lm.json)")
    parser.add_argument(
        "--format",
        choices=["text", "csv", "json"],
        default="text",
        help="text: name, confidence and text, tab-separated (default: %(default)s)",
    )
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument(
        "--pages-out",
        type=Path,
        help="inputs are pages (folders of images with ALTO or PAGE XML beside them, or XML "
        "files): write a copy of each XML here with the recognized text",
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=PROJECT_PARAMS,
        help="beam settings and batch size: the evaluate section (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    failed = 0

    def work() -> None:
        nonlocal failed
        if args.pages_out:
            predictions = predict_pages(
                args.model, args.inputs, args.decoder, args.params, args.pages_out, args.lm
            )
            print(f"[predict] wrote the pages with their text to {args.pages_out}", file=sys.stderr)
        else:
            predictions = predict(args.model, args.inputs, args.decoder, args.params, args.lm)
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

    run_command("predict", work)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
