"""The line-parquet schema every source is normalized to, and its validated, atomic I/O.

One row per text line: ``id``, ``image`` (grayscale PNG bytes, ``data.height`` px high,
aspect ratio kept), ``text`` (NFC, single spaces, stripped), ``width``, ``height`` and
``writer`` (null where unknown). Rows that cannot be used are dropped with a reason.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.charset import is_invisible
from pipeline.errors import PipelineError
from pipeline.layout import SPLITS  # noqa: F401  (re-exported: sources iterate it)

log = logging.getLogger(__name__)

# Every reason a row can be dropped for; all are reported (zeros too) so metric diffs line up.
DROP_REASONS = (
    "missing_text",
    "empty_text",
    "empty_image",
    "undecodable_image",
    "image_too_small",
    "image_too_large",
    "too_wide",
    # the pages source (pipeline/pages.py)
    "malformed_xml",
    "unknown_namespace",
    "missing_image",
    "image_name_mismatch",
    "line_outside_image",
    "degenerate_polygon",
)
MIN_SOURCE_SIDE = 8  # px; a source image thinner or narrower than this holds no readable text

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("text", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("writer", pa.string()),
    ]
)

# Keep PIL's decompression-bomb guard, but high enough for a 60,000 px wide line scan.
Image.MAX_IMAGE_PIXELS = 400_000_000


@dataclass(frozen=True)
class SourceRow:
    """One row as a source delivers it, before validation."""

    name: str  # how messages refer to the row, e.g. "train row 12"
    id: str
    image: object  # encoded image bytes (anything else is a bad row)
    text: object
    writer: str | None
    error: BadRow | None = None  # known bad at the source (a page's XML or image): dropped


class BadRow(ValueError):
    """A row that cannot be used; ``reason`` is a short key counted in metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TooManyBadRows(PipelineError):
    pass


class LinesFileError(PipelineError):
    """A line parquet that is missing, unreadable or not in the line schema."""


_WHITESPACE = re.compile(r"\s+")
# An ANSI escape sequence (colour codes pasted from a terminal): removed whole, not only ESC.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


def normalize_text(text: object) -> tuple[str, str]:
    """(clean text, what was removed): NFC, ANSI escapes and control/format characters
    removed, whitespace runs collapsed to one space, stripped. Empty text is a bad row."""
    if not isinstance(text, str):
        raise BadRow("missing_text", f"text is {type(text).__name__}, not a string")
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text))  # tabs, newlines: spaces
    removed = "".join(_ANSI_ESCAPE.findall(text))
    text = _ANSI_ESCAPE.sub("", text)
    removed += "".join(ch for ch in text if is_invisible(ch))
    text = _WHITESPACE.sub(" ", "".join(ch for ch in text if not is_invisible(ch))).strip()
    if not text:
        detail = "text is empty or whitespace only"
        raise BadRow("empty_text", f"{detail} (after removing {removed!r})" if removed else detail)
    return text, removed


def to_grayscale(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit 'L'; transparency is composited on white paper."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return Image.fromarray(((array - low) * scale).round().astype(np.uint8), "L")
    if image.mode == "P" or image.mode.endswith("A") or "transparency" in image.info:
        image = image.convert("RGBA")
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image)
    return image.convert("L")


def normalize_image(data: object, height: int, max_aspect_ratio: float) -> tuple[bytes, int, int]:
    """Encoded image bytes -> (grayscale PNG bytes at ``height`` px, width, height).

    Refused: an image that is not one, one under ``MIN_SOURCE_SIDE`` px either way, and one
    wider than ``max_aspect_ratio`` times its height (no text line is; a ruler line or a
    bad crop is, and would take the memory of a whole batch once resized).
    """
    if not isinstance(data, bytes | bytearray) or len(data) == 0:
        raise BadRow("empty_image", "no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()  # decode fully here: a truncated file fails now, not in training
            image = to_grayscale(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadRow("undecodable_image", f"{type(error).__name__}: {error}") from None
    except Image.DecompressionBombError as error:
        raise BadRow("image_too_large", str(error)) from None
    source_width, source_height = image.size
    if source_width == 0 or source_height == 0:
        raise BadRow("empty_image", f"image is {source_width}x{source_height}")
    if min(source_width, source_height) < MIN_SOURCE_SIDE:
        raise BadRow("image_too_small", f"image is {source_width}x{source_height} px")
    if source_width > max_aspect_ratio * source_height:
        raise BadRow(
            "too_wide",
            f"image is {source_width}x{source_height} px, aspect ratio "
            f"{source_width / source_height:.0f}:1 > data.max_aspect_ratio {max_aspect_ratio:g}",
        )
    return encode_line(image, height)


def encode_line(image: Image.Image, height: int) -> tuple[bytes, int, int]:
    """Grayscale line image -> (PNG bytes resized to ``height``, aspect kept; width; height)."""
    width = max(1, round(image.width * height / image.height))
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue(), width, height


def decode_png(data: bytes) -> torch.Tensor:
    """A stored line's PNG -> ``(1, H, W)`` uint8, dark ink on light paper."""
    with Image.open(io.BytesIO(data)) as image:
        return torch.from_numpy(np.array(image.convert("L")))[None]


@dataclass
class DropLog:
    """Rows dropped per reason, and texts cleaned of invisible characters, with a few
    examples of each for the warning."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    cleaned_texts: int = 0
    cleaned_chars: Counter[str] = field(default_factory=Counter)
    max_examples: int = 3

    def add(self, row_name: str, error: BadRow) -> None:
        self.counts[error.reason] += 1
        examples = self.examples.setdefault(error.reason, [])
        if len(examples) < self.max_examples:
            examples.append(f"{row_name}: {error.detail}")

    def cleaned(self, row_name: str, removed: str) -> None:
        self.cleaned_texts += 1
        self.cleaned_chars.update(removed)
        examples = self.examples.setdefault("cleaned", [])
        if len(examples) < self.max_examples:
            examples.append(f"{row_name}: removed {removed!r}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_reason(self) -> dict[str, int]:
        return {reason: self.counts[reason] for reason in DROP_REASONS}

    def warn(self, split: str) -> None:
        if self.cleaned_texts:
            log.warning(
                "%s: removed control/format characters from %d text(s), e.g. %s",
                split,
                self.cleaned_texts,
                "; ".join(self.examples["cleaned"]),
            )
        if not self.total:
            return
        lines = [f"{split}: dropped {self.total} row(s)"]
        for reason, count in sorted(self.counts.items()):
            lines.append(f"  {reason}: {count}, e.g. " + "; ".join(self.examples[reason]))
        log.warning("\n".join(lines))


def normalize_rows(
    source_rows: Iterable[SourceRow], height: int, max_aspect_ratio: float, drops: DropLog
) -> list[dict]:
    """Source rows -> schema rows; bad rows are counted in ``drops``."""
    rows = []
    for source in source_rows:
        if source.error is not None:
            drops.add(source.name, source.error)
            continue
        try:
            text, removed = normalize_text(source.text)
            png, width, row_height = normalize_image(source.image, height, max_aspect_ratio)
        except BadRow as error:
            drops.add(source.name, error)
            continue
        if removed:
            drops.cleaned(source.name, removed)
        rows.append(
            {
                "id": source.id,
                "image": png,
                "text": text,
                "width": width,
                "height": row_height,
                "writer": source.writer,
            }
        )
    return rows


def check_bad_fraction(
    split: str, dropped: int, total: int, max_fraction: float, source: str
) -> None:
    if total == 0:
        raise TooManyBadRows(f"{source}: split {split!r} has no rows")
    fraction = dropped / total
    if fraction > max_fraction:
        raise TooManyBadRows(
            f"{source}: {dropped} of {total} rows of split {split!r} are unusable "
            f"({fraction:.1%} > data.max_bad_fraction = {max_fraction:.1%}); "
            "see the warnings above for reasons and examples"
        )


def write_split(rows: list[dict], path: Path) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    # Fixed writer settings so identical rows give identical bytes (DVC hashes the file).
    pq.write_table(
        table, path, compression="zstd", use_dictionary=["writer"], write_statistics=False
    )


def read_split(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise LinesFileError(
            f"{path}: cannot read line parquet ({error}); run `dvc repro pull`"
        ) from None
    if not table.schema.equals(SCHEMA, check_metadata=False):
        raise LinesFileError(
            f"{path}: columns {table.schema.names} are not the line schema {SCHEMA.names}"
        )
    return table


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a scratch folder beside ``target``; it replaces ``target`` only on success.

    A killed process leaves the scratch folder (cleaned at the next start), never a half
    written ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    scratch = target.parent / f".{target.name}.partial-{os.getpid()}"
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(scratch, target)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.partial-{os.getpid()}")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)
