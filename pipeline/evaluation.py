"""Scoring a model on the validation and test splits with every decoder.

``evaluate`` writes the quality metrics (CER, WER, case-insensitive CER per split and
decoder), the speed of the network and of each decoder, one prediction row per line, the
corpus CER per writer and per text length (DVC plots) and a picture of the worst test lines.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from torchmetrics.functional.text import char_error_rate

from pipeline.data import LineDataset
from pipeline.figures import worst_lines
from pipeline.layout import LinesFolder
from pipeline.lines import atomic_write_text, decode_png
from pipeline.lit_module import text_metrics
from pipeline.recognizer import Reading, Readings, Recognizer

log = logging.getLogger(__name__)

SPLITS = ("validation", "test")
LENGTH_BUCKET = 10  # characters per bucket of the CER-by-length plot


@dataclass(frozen=True)
class EvaluationOutputs:
    metrics: Path  # metrics/evaluate.json
    speed: Path  # metrics/evaluate_speed.json
    predictions: Path  # reports/predictions.parquet
    plots: Path  # reports/plots/cer_by_{length,writer}.json
    worst: Path  # reports/worst_lines.png


def quality(predictions: list[str], truths: list[str]) -> dict[str, float]:
    metrics = text_metrics()
    scores = {name: float(value) for name, value in metrics(predictions, truths).items()}
    lower = text_metrics()
    lower.update([p.lower() for p in predictions], [t.lower() for t in truths])
    scores["cer_case_insensitive"] = float(lower.compute()["cer"])
    return {name: round(value, 6) for name, value in scores.items()}


def split_metrics(dataset: LineDataset, read: Readings) -> dict:
    """Per decoder its quality; under ``as_stored`` the same for the lines read once as
    stored (the figures ``evaluate.scales: [1.0]`` gives), to see what the other sizes buy."""

    def by_decoder(readings: dict[str, list[Reading]]) -> dict:
        return {
            name: quality([r.text for r in lines], dataset.texts)
            for name, lines in readings.items()
        }

    metrics: dict = by_decoder(read.by_decoder)
    metrics["as_stored"] = by_decoder(read.as_stored)
    unknown = [dataset.charset.unknown(text) for text in dataset.texts]
    metrics["lines"] = len(dataset)
    # characters the model cannot write: counted, and (rightly) counted as errors above
    metrics["lines_with_unknown_chars"] = sum(1 for u in unknown if u)
    metrics["unknown_chars"] = sum(
        sum(ch in u for ch in text) for u, text in zip(unknown, dataset.texts, strict=True)
    )
    return metrics


def _cer(prediction: str, truth: str) -> float:
    return round(float(char_error_rate(prediction, truth)), 6)


def prediction_rows(split: str, dataset: LineDataset, readings: dict[str, list[Reading]]) -> list:
    """One row per line: truth, each decoder's text and CER, the beam's score and confidence."""
    rows = []
    for i, truth in enumerate(dataset.texts):
        row = {"split": split, "id": dataset.ids[i], "writer": dataset.writers[i], "truth": truth}
        row |= {name: readings[name][i].text for name in readings}
        row |= {f"{name}_cer": _cer(readings[name][i].text, truth) for name in readings}
        beam = readings["beam"][i]
        row |= {
            "beam_score": round(beam.score, 4),
            "confidence": round(beam.confidence, 4),
            "chars": len(truth),
        }
        rows.append(row)
    return rows


def grouped_cer(rows: list[dict], key: Callable[[dict], str]) -> list[dict]:
    """Corpus-level CER per group (edits over reference characters, not a mean of lines)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    table = []
    for name in sorted(groups, key=lambda g: (len(g), g)):
        members = groups[name]
        truths = [row["truth"] for row in members]
        entry = {"group": name, "lines": len(members)}
        for decoder in ("greedy", "beam"):
            entry[f"{decoder}_cer"] = round(
                float(char_error_rate([r[decoder] for r in members], truths)), 6
            )
        table.append(entry)
    return table


def length_bucket(row: dict) -> str:
    low = row["chars"] // LENGTH_BUCKET * LENGTH_BUCKET
    return f"{low:03d}-{low + LENGTH_BUCKET - 1:03d}"


def _write_parquet(rows: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.partial")
    pq.write_table(pa.Table.from_pylist(list(rows)), scratch)
    scratch.replace(path)


def evaluate(
    recognizer: Recognizer, lines: LinesFolder, outputs: EvaluationOutputs, worst_count: int
) -> dict:
    """Read both splits with every decoder the recognizer has; write ``outputs``."""
    decoders = list(recognizer.decoders)
    metrics: dict = {}
    rows: list[dict] = []
    seconds: dict[str, float] = defaultdict(float)
    datasets: dict[str, LineDataset] = {}
    lines_read, read_seconds = 0, 0.0
    for split in SPLITS:
        dataset = LineDataset(lines.split(split), recognizer.charset, recognizer.height)
        datasets[split] = dataset
        start = time.perf_counter()
        read = recognizer.read_lines(
            lambda i, d=dataset: d[i]["image"], dataset.widths, decoders, progress=split
        )
        read_seconds += time.perf_counter() - start
        metrics[split] = split_metrics(dataset, read)
        rows += prediction_rows(split, dataset, read.by_decoder)
        for step, value in read.seconds.items():
            seconds[step] += value
        lines_read += len(dataset)
        if metrics[split]["lines_with_unknown_chars"]:
            log.warning(
                "%s: %d line(s) hold %d character(s) the model cannot write; they count as errors",
                split,
                metrics[split]["lines_with_unknown_chars"],
                metrics[split]["unknown_chars"],
            )

    _write_parquet(rows, outputs.predictions)
    test_rows = [row for row in rows if row["split"] == "test"]
    outputs.plots.mkdir(parents=True, exist_ok=True)
    for name, key in (("length", length_bucket), ("writer", lambda r: r["writer"] or "?")):
        table = grouped_cer(test_rows, key)
        atomic_write_text(outputs.plots / f"cer_by_{name}.json", json.dumps(table, indent=1))
    worst = sorted(test_rows, key=lambda r: (-r["beam_cer"], -r["greedy_cer"], r["id"]))
    worst = worst[:worst_count]
    test = datasets["test"]
    position = {line_id: i for i, line_id in enumerate(test.ids)}
    stored = [decode_png(test.images[position[row["id"]]]) for row in worst]
    outputs.worst.parent.mkdir(parents=True, exist_ok=True)
    worst_lines(worst, stored, f"worst {len(worst)} test lines by beam CER").save(outputs.worst)

    # each step's lines/s is per process; the whole reading's wall-clock seconds show what
    # the decoding processes bought
    speed: dict = {
        "device": recognizer.device.type,
        "lines": lines_read,
        "decode_processes": recognizer.decode_processes,
        "read_seconds": round(read_seconds, 1),
    }
    for step, value in seconds.items():
        speed[f"{step}_lines_per_second"] = round(lines_read / value, 1) if value else None
    atomic_write_text(outputs.metrics, json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(outputs.speed, json.dumps(speed, indent=2) + "\n")
    for split in SPLITS:
        log.info(
            "%s: CER %s (read once as stored: %s)",
            split,
            ", ".join(f"{name} {metrics[split][name]['cer']:.4f}" for name in decoders),
            ", ".join(f"{metrics[split]['as_stored'][name]['cer']:.4f}" for name in decoders),
        )
    return metrics
