"""Stage ``evaluate``: greedy and beam CER/WER on validation and test.

Writes ``metrics/evaluate.json`` (quality, in git), ``metrics/evaluate_speed.json``
(lines/s of the model and of each decoder), ``reports/predictions.parquet`` (every line:
truth, greedy, beam, per-line CER, score), ``reports/plots/cer_by_*.json`` (DVC plots) and
``reports/worst_lines.png`` (the worst test lines with truth and prediction under each).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader
from torchmetrics.functional.text import char_error_rate
from tqdm import tqdm

from pipeline.charlm import CharNgram
from pipeline.data import LineDataset, WidthBucketBatches, collate, decode_png
from pipeline.decoding import build_decoders
from pipeline.lines import atomic_write_text
from pipeline.lit_module import CRNNModule, load_model, text_metrics
from pipeline.params import Params, load_params
from stages._cli import run

log = logging.getLogger(__name__)

SPLITS = ("validation", "test")
LENGTH_BUCKET = 10  # characters per bucket of the CER-by-length plot


@dataclass
class SplitResult:
    dataset: LineDataset
    texts: dict[str, list[str]] = field(default_factory=dict)  # decoder -> text per line
    scores: dict[str, list[float]] = field(default_factory=dict)
    frames: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def device_for() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def decode_split(
    module: CRNNModule,
    dataset: LineDataset,
    params: Params,
    device: torch.device,
    lm: CharNgram | None = None,
) -> SplitResult:
    """Run the network once per line and decode its output with every decoder."""
    decoders = build_decoders(module.charset, params.evaluate, lm)
    batches = WidthBucketBatches(
        dataset.widths,
        params.evaluate.batch_size,
        shuffle=False,
        seed=0,
        height=dataset.height,
        max_pixels=params.evaluate.max_batch_pixels,
    )
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
    result = SplitResult(dataset)
    order: list[int] = [i for batch in batches for i in batch]
    collected: dict[str, list] = defaultdict(list)
    frames: list[int] = []
    with torch.no_grad():
        for batch in tqdm(loader, desc="evaluate", unit="batch", mininterval=1.0):
            start = time.perf_counter()
            images, widths = batch.images.to(device), batch.widths.to(device)
            log_probs, _ = module.model(images, widths)  # (T, B, K)
            lengths = module.model.output_lengths(widths)
            if device.type == "cuda":
                torch.cuda.synchronize()
            result.seconds["model"] += time.perf_counter() - start
            frames += lengths.tolist()
            for name, decoder in decoders.items():
                start = time.perf_counter()
                collected[name] += decoder(log_probs, lengths)
                result.seconds[name] += time.perf_counter() - start
    # back to the split's row order
    position = {index: k for k, index in enumerate(order)}
    ranks = [position[i] for i in range(len(dataset))]
    result.frames = [frames[k] for k in ranks]
    for name, hypotheses in collected.items():
        result.texts[name] = [hypotheses[k].text for k in ranks]
        result.scores[name] = [hypotheses[k].score for k in ranks]
    return result


def quality(predictions: list[str], truths: list[str]) -> dict[str, float]:
    metrics = text_metrics()
    scores = {name: float(value) for name, value in metrics(predictions, truths).items()}
    lower = text_metrics()
    lower.update([p.lower() for p in predictions], [t.lower() for t in truths])
    scores["cer_case_insensitive"] = float(lower.compute()["cer"])
    return {name: round(value, 6) for name, value in scores.items()}


def split_metrics(result: SplitResult) -> dict:
    dataset = result.dataset
    unknown = [dataset.charset.unknown(text) for text in dataset.texts]
    metrics: dict = {name: quality(texts, dataset.texts) for name, texts in result.texts.items()}
    metrics["lines"] = len(dataset)
    # characters the model cannot write: counted, and (rightly) counted as errors above
    metrics["lines_with_unknown_chars"] = sum(1 for u in unknown if u)
    metrics["unknown_chars"] = sum(
        sum(ch in u for ch in text) for u, text in zip(unknown, dataset.texts, strict=True)
    )
    return metrics


def prediction_rows(split: str, result: SplitResult) -> list[dict]:
    dataset = result.dataset
    rows = []
    extra_decoders = sorted(result.texts.keys() - {"greedy", "beam"})  # beam_lm
    for i, truth in enumerate(dataset.texts):
        greedy, beam = result.texts["greedy"][i], result.texts["beam"][i]
        score = result.scores["beam"][i]
        extra = {}
        for name in extra_decoders:
            extra[name] = text = result.texts[name][i]
            extra[f"{name}_cer"] = round(float(char_error_rate(text, truth)), 6)
        rows.append(
            {
                "split": split,
                "id": dataset.ids[i],
                "writer": dataset.writers[i],
                "truth": truth,
                "greedy": greedy,
                "beam": beam,
                "greedy_cer": round(float(char_error_rate(greedy, truth)), 6),
                "beam_cer": round(float(char_error_rate(beam, truth)), 6),
                **extra,
                "beam_score": round(score, 4),
                # geometric mean of the per-frame probability of the beam's path
                "confidence": round(float(torch.tensor(score / max(result.frames[i], 1)).exp()), 4),
                "chars": len(truth),
            }
        )
    return rows


def grouped_cer(rows: list[dict], key) -> list[dict]:
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


def draw_worst_lines(rows: list[dict], dataset: LineDataset, count: int) -> Image.Image:
    worst = sorted(rows, key=lambda r: (-r["beam_cer"], -r["greedy_cer"], r["id"]))[:count]
    index = {line_id: i for i, line_id in enumerate(dataset.ids)}
    font = ImageFont.load_default(size=14)
    shown = 64
    images = []
    for row in worst:
        image = Image.fromarray(decode_png(dataset.images[index[row["id"]]])[0].numpy(), "L")
        images.append(image.resize((max(1, round(image.width * shown / image.height)), shown)))
    width = max([900, *(im.width + 20 for im in images)])
    block = shown + 3 * 18 + 14
    canvas = Image.new("RGB", (width, 30 + block * max(1, len(images))), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 6), f"worst {len(worst)} test lines by beam CER", fill="black", font=font)
    y = 30
    for row, image in zip(worst, images, strict=True):
        canvas.paste(image, (10, y))
        label = (
            f"{row['id']} ({row['writer']}): "
            f"beam CER {row['beam_cer']:.2f}, greedy CER {row['greedy_cer']:.2f}"
        )
        draw.text((10, y + shown + 2), label, fill="gray", font=font)
        draw.text((10, y + shown + 20), f"truth: {row['truth']}", fill="darkgreen", font=font)
        draw.text((10, y + shown + 38), f"beam:  {row['beam']}", fill="darkred", font=font)
        y += block
    return canvas


def evaluate(
    params: Params,
    model_path: Path,
    lm_path: Path | None,
    lines_dir: Path,
    metrics_path: Path,
    speed_path: Path,
    predictions_path: Path,
    plots_dir: Path,
    worst_path: Path,
) -> dict:
    device = device_for()
    module = load_model(model_path).to(device)
    lm = CharNgram.load(lm_path) if lm_path else None
    height = module.model.config.architecture.height
    metrics: dict = {}
    rows: list[dict] = []
    seconds: dict[str, float] = defaultdict(float)
    lines_read = 0
    results = {}
    for split in SPLITS:
        dataset = LineDataset(lines_dir / f"{split}.parquet", module.charset, height)
        results[split] = result = decode_split(module, dataset, params, device, lm)
        metrics[split] = split_metrics(result)
        rows += prediction_rows(split, result)
        for name, value in result.seconds.items():
            seconds[name] += value
        lines_read += len(dataset)
        if metrics[split]["lines_with_unknown_chars"]:
            log.warning(
                "%s: %d line(s) hold %d character(s) the model cannot write; they count as errors",
                split,
                metrics[split]["lines_with_unknown_chars"],
                metrics[split]["unknown_chars"],
            )

    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = predictions_path.with_name(f".{predictions_path.name}.partial")
    pq.write_table(pa.Table.from_pylist(rows), scratch)
    scratch.replace(predictions_path)
    test_rows = [row for row in rows if row["split"] == "test"]
    plots_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        plots_dir / "cer_by_length.json",
        json.dumps(grouped_cer(test_rows, length_bucket), indent=1),
    )
    atomic_write_text(
        plots_dir / "cer_by_writer.json",
        json.dumps(grouped_cer(test_rows, lambda r: r["writer"] or "?"), indent=1),
    )
    worst_path.parent.mkdir(parents=True, exist_ok=True)
    draw_worst_lines(test_rows, results["test"].dataset, params.evaluate.worst_lines).save(
        worst_path
    )

    speed = {"device": device.type, "lines": lines_read}
    for name, value in seconds.items():
        speed[f"{name}_lines_per_second"] = round(lines_read / value, 1) if value else None
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(speed_path, json.dumps(speed, indent=2) + "\n")
    for split in SPLITS:
        log.info(
            "%s: CER greedy %.4f, beam %.4f; WER greedy %.4f, beam %.4f",
            split,
            metrics[split]["greedy"]["cer"],
            metrics[split]["beam"]["cer"],
            metrics[split]["greedy"]["wer"],
            metrics[split]["beam"]["wer"],
        )
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", type=Path, default=Path("models/model.ckpt"))
    parser.add_argument(
        "--lm", type=Path, default=None, help="character LM (models/lm.json): adds beam_lm"
    )
    parser.add_argument("--lines", type=Path, default=Path("data/lines"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/evaluate.json"))
    parser.add_argument("--speed", type=Path, default=Path("metrics/evaluate_speed.json"))
    parser.add_argument("--predictions", type=Path, default=Path("reports/predictions.parquet"))
    parser.add_argument("--plots", type=Path, default=Path("reports/plots"))
    parser.add_argument("--worst", type=Path, default=Path("reports/worst_lines.png"))
    args = parser.parse_args(argv)
    run(
        "evaluate",
        lambda: evaluate(
            load_params(args.params),
            args.model,
            args.lm,
            args.lines,
            args.metrics,
            args.speed,
            args.predictions,
            args.plots,
            args.worst,
        ),
    )


if __name__ == "__main__":
    main()
