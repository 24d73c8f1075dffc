"""Pulling a line dataset (the embedded synthetic lines, or a hub-layout dataset) into a
lines folder, atomically, with a summary of what was kept, dropped and cleaned."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import hub, synthetic
from pipeline import pages as page_source
from pipeline.charset import Charset
from pipeline.layout import LinesFolder
from pipeline.lines import (
    SPLITS,
    DropLog,
    TooManyBadRows,
    atomic_directory,
    atomic_write_text,
    check_bad_fraction,
    normalize_rows,
    write_split,
)
from pipeline.pages import PagesSummary
from pipeline.params import Params

log = logging.getLogger(__name__)


def _source_splits(params: Params, pages: PagesSummary):
    """{split: (row count or None when not known ahead, row iterator)}."""
    if params.data.source == "synthetic":
        texts = synthetic.split_texts(params.synthetic, params.seed)
        return {
            split: (
                len(texts[split]),
                synthetic.generate_split(params.synthetic, params.seed, split, texts[split]),
            )
            for split in SPLITS
        }
    if params.data.source == "pages":
        return _page_splits(params, pages)
    dataset = hub.load_dataset_dict(params.data.hub_id, params.data.hub_revision)
    return {split: hub.iter_split(dataset, split) for split in SPLITS}


def _page_splits(params: Params, summary: PagesSummary):
    data = params.data
    folder = Path(data.pages_dir).expanduser()
    files = page_source.find_page_files(folder)
    relative = {path: path.relative_to(folder) for path in files}
    groups = {
        path: page_source.page_group(rel, data.pages_group_regex) for path, rel in relative.items()
    }
    folders = {path: page_source.folder_split(rel) for path, rel in relative.items()}
    split_of = page_source.assign_splits(groups, folders, data.pages_split_ratio, params.seed)

    def rows(split: str):
        for path in files:
            if split_of[path] == split:
                yield from page_source.page_rows(
                    path,
                    folder,
                    groups[path],
                    data.pages_line_labels,
                    data.pages_min_chars,
                    summary,
                )

    return {split: (None, rows(split)) for split in SPLITS}


def _split_summary(rows: list[dict], drops: DropLog, charset: Charset) -> dict:
    widths = np.array([row["width"] for row in rows], dtype=np.float64)
    chars = np.array([len(row["text"]) for row in rows], dtype=np.float64)
    return {
        "lines": len(rows),
        "dropped": drops.total,
        "dropped_by_reason": drops.by_reason(),
        "lines_with_chars_outside_charset": sum(bool(charset.unknown(row["text"])) for row in rows),
        "texts_cleaned": drops.cleaned_texts,  # control/format characters removed
        "chars_removed": sum(drops.cleaned_chars.values()),
        "width_px": {
            "mean": round(float(widths.mean()), 1),
            "min": int(widths.min()),
            "max": int(widths.max()),
        },
        "chars_per_line_mean": round(float(chars.mean()), 2),
        "px_per_char_mean": round(float(widths.sum() / chars.sum()), 2),
    }


def pull(params: Params, out_dir: Path, metrics_path: Path) -> dict:
    """Build the three splits and the charset atomically; return the metrics written."""
    source_name = {"synthetic": "synthetic", "hub": params.data.hub_id}.get(
        params.data.source, params.data.pages_dir
    )
    pages = PagesSummary()
    started = time.perf_counter()
    splits = _source_splits(params, pages)
    rows: dict[str, list[dict]] = {}
    drops: dict[str, DropLog] = {}
    with atomic_directory(out_dir) as scratch:
        lines = LinesFolder(scratch)
        for split, (total, source_rows) in splits.items():
            drops[split] = DropLog()
            progress = tqdm(
                source_rows, total=total, desc=f"pull {split}", unit="line", mininterval=1.0
            )
            rows[split] = normalize_rows(
                progress, params.data.height, params.data.max_aspect_ratio, drops[split]
            )
            drops[split].warn(split)
            seen = len(rows[split]) + drops[split].total if total is None else total
            check_bad_fraction(
                split, drops[split].total, seen, params.data.max_bad_fraction, source_name
            )
            if not rows[split]:
                raise TooManyBadRows(f"{source_name}: split {split!r} has no usable line")
            write_split(rows[split], lines.split(split))
        # Train characters only: a model cannot learn what it never sees. Validation/test
        # characters outside it are counted here and at evaluation.
        charset = Charset.from_texts(row["text"] for row in rows["train"])
        charset.save(lines.charset)
    metrics = {"charset_size": len(charset.characters), "height_px": params.data.height}
    metrics.update({split: _split_summary(rows[split], drops[split], charset) for split in SPLITS})
    if params.data.source == "pages":
        metrics["pages"] = pages.as_dict() | {"seconds": round(time.perf_counter() - started, 1)}
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    log.info(
        "wrote %s: %s lines, charset of %d",
        out_dir,
        " / ".join(f"{split} {len(rows[split])}" for split in SPLITS),
        len(charset.characters),
    )
    return metrics
