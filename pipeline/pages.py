"""Transcribed pages as a line source, and recognized text written back into them.

A pages folder holds page images with ALTO (v2, v3, v4) or PAGE (2013, 2019) XML beside them,
as eScriptorium, Transkribus and kraken export them. Each text line becomes a line row: cut
out by its polygon (pixels outside it set to the paper colour, as kraken does) or by its box
where there is no polygon. Every problem is a counted ``BadRow`` naming the file, never a
crash: malformed XML, an unknown namespace, a missing or unreadable image, an image named
otherwise than the XML says, a line outside the image, a degenerate polygon.

Tensor-free: plain PIL and numpy; ``xml.etree`` parses (no DTDs, no external entities).
"""

from __future__ import annotations

import io
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from pipeline.errors import PipelineError
from pipeline.layout import SPLITS
from pipeline.lines import BadRow, SourceRow, to_grayscale

log = logging.getLogger(__name__)

ALTO_NAMESPACES = {
    "http://www.loc.gov/standards/alto/ns-v2#": "ALTO v2",
    "http://www.loc.gov/standards/alto/ns-v3#": "ALTO v3",
    "http://www.loc.gov/standards/alto/ns-v4#": "ALTO v4",
}
PAGE_NAMESPACES = {
    "http://schema.primaresearch.org/PAGE/gts/pagecontent/2013-07-15": "PAGE 2013",
    "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15": "PAGE 2019",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
MIN_LINE_SIDE = 2  # px; a polygon or box thinner than this holds no line
_STRUCTURE_TYPE = re.compile(r"structure\s*\{[^}]*type\s*:\s*([^;}\s]+)")


class PagesLayoutError(PipelineError):
    """Pages that cannot be split: some in split folders and some not, too few groups."""


@dataclass(frozen=True)
class PageLine:
    id: str
    text: str | None  # None: no transcription (a line to read, not to train on)
    polygon: tuple[tuple[float, float], ...]  # the line's outline; its box if it has none
    labels: tuple[str, ...]  # ALTO tag labels (line and block); PAGE region type, custom type


@dataclass(frozen=True)
class Page:
    xml: Path
    format: str  # "ALTO v4", "PAGE 2019", ...
    image_name: str  # as the XML names it
    size: tuple[int, int] | None  # (width, height) the coordinates refer to, if declared
    lines: tuple[PageLine, ...]


def _points(text: str | None) -> tuple[tuple[float, float], ...]:
    """ "x y x y ..." (ALTO) or "x,y x,y ..." (PAGE) -> ((x, y), ...); () when unreadable."""
    if not text:
        return ()
    numbers = re.split(r"[\s,]+", text.strip())
    try:
        values = [float(n) for n in numbers if n]
    except ValueError:
        return ()
    if len(values) % 2:
        return ()
    return tuple(zip(values[0::2], values[1::2], strict=True))


def _box(x: float, y: float, width: float, height: float) -> tuple[tuple[float, float], ...]:
    return ((x, y), (x + width, y), (x + width, y + height), (x, y + height))


def _number(element: ET.Element, name: str) -> float | None:
    try:
        return float(element.get(name, ""))
    except ValueError:
        return None


def _alto(root: ET.Element, ns: str, xml: Path, version: str) -> Page:
    q = f"{{{ns}}}"
    name = root.findtext(f"{q}Description/{q}sourceImageInformation/{q}fileName") or ""
    tags = {tag.get("ID"): tag.get("LABEL") or "" for tag in root.iter() if tag.get("LABEL")}
    page = root.find(f".//{q}Page")
    size = None
    if page is not None and _number(page, "WIDTH") and _number(page, "HEIGHT"):
        size = (round(_number(page, "WIDTH") or 0), round(_number(page, "HEIGHT") or 0))
    lines = []
    for block in root.iter(f"{q}TextBlock"):
        block_labels = [tags.get(ref, ref) for ref in (block.get("TAGREFS") or "").split()]
        for line in block.iter(f"{q}TextLine"):
            shape = line.find(f"{q}Shape/{q}Polygon")
            polygon = _points(shape.get("POINTS")) if shape is not None else ()
            if not polygon:
                box = [_number(line, key) for key in ("HPOS", "VPOS", "WIDTH", "HEIGHT")]
                polygon = _box(*box) if None not in box else ()  # type: ignore[arg-type]
            words = []
            for child in line:
                if child.tag == f"{q}String":
                    words.append(child.get("CONTENT") or "")
                elif child.tag == f"{q}HYP" and words:
                    words[-1] += child.get("CONTENT") or ""
            text = " ".join(w for w in words if w) if words else None
            labels = [tags.get(ref, ref) for ref in (line.get("TAGREFS") or "").split()]
            lines.append(
                PageLine(
                    line.get("ID") or f"line{len(lines)}",
                    text,
                    polygon,
                    tuple(dict.fromkeys(labels + block_labels)),
                )
            )
    return Page(xml, version, name, size, tuple(lines))


def _page_xml(root: ET.Element, ns: str, xml: Path, version: str) -> Page:
    q = f"{{{ns}}}"
    page = root.find(f"{q}Page")
    if page is None:
        raise BadRow("malformed_xml", f"{xml.name}: PAGE file without a Page element")
    name = page.get("imageFilename") or ""
    size = None
    if _number(page, "imageWidth") and _number(page, "imageHeight"):
        size = (round(_number(page, "imageWidth") or 0), round(_number(page, "imageHeight") or 0))
    lines = []
    for region in page.iter(f"{q}TextRegion"):
        region_labels = [region.get("type") or ""]
        region_labels += _STRUCTURE_TYPE.findall(region.get("custom") or "")
        for line in region.findall(f"{q}TextLine"):
            coords = line.find(f"{q}Coords")
            polygon = _points(coords.get("points")) if coords is not None else ()
            equivs = line.findall(f"{q}TextEquiv")
            # several readings: the one with the lowest index (PAGE: index 1 is the first)
            equivs.sort(key=lambda e: int(e.get("index", "0") or 0))
            text = equivs[0].findtext(f"{q}Unicode") if equivs else None
            labels = _STRUCTURE_TYPE.findall(line.get("custom") or "") + region_labels
            lines.append(
                PageLine(
                    line.get("id") or f"line{len(lines)}",
                    text,
                    polygon,
                    tuple(dict.fromkeys(label for label in labels if label)),
                )
            )
    return Page(xml, version, name, size, tuple(lines))


def read_page(xml: Path) -> Page:
    """An ALTO or PAGE file -> its lines; ``BadRow`` (malformed_xml, unknown_namespace)."""
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as error:
        raise BadRow("malformed_xml", f"{xml.name}: {error}") from None
    namespace = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    if namespace in ALTO_NAMESPACES and root.tag.endswith("}alto"):
        return _alto(root, namespace, xml, ALTO_NAMESPACES[namespace])
    if namespace in PAGE_NAMESPACES and root.tag.endswith("}PcGts"):
        return _page_xml(root, namespace, xml, PAGE_NAMESPACES[namespace])
    raise BadRow(
        "unknown_namespace",
        f"{xml.name}: root {root.tag!r} is neither ALTO v2-v4 nor PAGE 2013/2019",
    )


def page_image_path(page: Page) -> Path:
    """The image the XML names, beside it; ``BadRow`` missing_image or image_name_mismatch
    (the named file is absent but one with the XML's stem is there: which is meant?)."""
    named = page.xml.parent / Path(page.image_name).name if page.image_name else None
    if named is not None and named.is_file():
        return named
    beside = [page.xml.with_suffix(s) for s in IMAGE_SUFFIXES if page.xml.with_suffix(s).is_file()]
    if beside and page.image_name:
        raise BadRow(
            "image_name_mismatch",
            f"{page.xml.name} names {page.image_name!r}, but only {beside[0].name} is beside it",
        )
    if beside:
        return beside[0]
    raise BadRow("missing_image", f"{page.xml.name}: no image {page.image_name or page.xml.stem}")


def open_page_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as opened:
            opened.load()
            return to_grayscale(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadRow("undecodable_image", f"{path.name}: {type(error).__name__}: {error}") from None


def cut_line(image: Image.Image, polygon: Sequence[tuple[float, float]]) -> Image.Image:
    """The line's box of the page (grayscale), pixels outside its polygon set to the paper
    colour (the median of the box: most of a line's box is paper). ``BadRow`` for a polygon
    with under 3 points or no area, or one that lies outside the image."""
    if len(polygon) < 3:
        raise BadRow("degenerate_polygon", f"{len(polygon)} point(s)")
    xs, ys = [x for x, _ in polygon], [y for _, y in polygon]
    outline = (max(xs) - min(xs), max(ys) - min(ys))
    if min(outline) < MIN_LINE_SIDE:
        raise BadRow("degenerate_polygon", f"outline {outline[0]:.0f}x{outline[1]:.0f} px")
    left, top = max(0, int(np.floor(min(xs)))), max(0, int(np.floor(min(ys))))
    right = min(image.width, int(np.ceil(max(xs))))
    bottom = min(image.height, int(np.ceil(max(ys))))
    if right - left < MIN_LINE_SIDE or bottom - top < MIN_LINE_SIDE:
        raise BadRow(
            "line_outside_image",
            f"box ({min(xs):.0f}, {min(ys):.0f})-({max(xs):.0f}, {max(ys):.0f}) vs image "
            f"{image.width}x{image.height}",
        )
    crop = image.crop((left, top, right, bottom))
    mask = Image.new("L", crop.size, 0)
    ImageDraw.Draw(mask).polygon([(x - left, y - top) for x, y in polygon], fill=255)
    pixels, inside = np.asarray(crop), np.asarray(mask) > 0
    if inside.sum() < MIN_LINE_SIDE * MIN_LINE_SIDE:
        raise BadRow("degenerate_polygon", "the polygon encloses no pixels")
    paper = np.uint8(np.median(pixels))
    return Image.fromarray(np.where(inside, pixels, paper).astype(np.uint8), "L")


def _scaled(page: Page, image: Image.Image, polygon):
    """Coordinates of a page declared at another size than its image (a downscaled copy)."""
    if page.size is None or page.size == image.size or 0 in page.size:
        return polygon
    sx, sy = image.width / page.size[0], image.height / page.size[1]
    return tuple((x * sx, y * sy) for x, y in polygon)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class PagesSummary:
    """What reading a pages folder found, for ``metrics/data.json``."""

    pages: int = 0
    lines_found: int = 0
    lines_without_text: int = 0
    lines_filtered_by_label: int = 0
    lines_too_short: int = 0
    formats: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "pages": self.pages,
            "lines_found": self.lines_found,
            "lines_without_text": self.lines_without_text,
            "lines_filtered_by_label": self.lines_filtered_by_label,
            "lines_too_short": self.lines_too_short,
            "formats": dict(sorted(self.formats.items())),
        }


def find_page_files(folder: Path) -> list[Path]:
    """The XML files of a pages folder, searched recursively, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.pages_dir: {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".xml" and p.is_file())
    if not files:
        raise FileNotFoundError(f"data.pages_dir: {folder} holds no .xml files (ALTO or PAGE)")
    return files


def page_group(relative: Path, pattern: str) -> str:
    """The group (writer, document) of a page: the first group of ``pattern`` searched in
    its path relative to the pages folder (posix, no suffix), else the whole match."""
    key = relative.with_suffix("").as_posix()
    match = re.search(pattern, key)
    if match is None:
        return key
    return match.group(1) if match.groups() else match.group(0)


def folder_split(relative: Path) -> str | None:
    found = [part for part in relative.parts[:-1] if part in SPLITS]
    return found[-1] if found else None


def assign_splits(
    groups: dict[Path, str], folders: dict[Path, str | None], ratio: Sequence[float], seed: int
) -> dict[Path, str]:
    """Each page's split: its ``train``/``validation``/``test`` folder, or else a seeded draw
    over groups in ``ratio``, so that no group spans two splits."""
    with_folder = [path for path, split in folders.items() if split]
    if with_folder:
        without = [path for path, split in folders.items() if not split]
        if without:
            raise PagesLayoutError(
                f"{without[0]} is in no train/validation/test folder while "
                f"{with_folder[0]} is: put every page in one, or none (data.pages_split_ratio)"
            )
        return {path: split for path, split in folders.items() if split}
    names = sorted(set(groups.values()))
    if len(names) < len(SPLITS):
        raise PagesLayoutError(
            f"{len(names)} group(s) ({', '.join(names)}) cannot fill three splits: put the "
            "pages in train/validation/test folders, or set data.pages_group_regex so that "
            "there are more groups (one per writer or document)"
        )
    order = [names[i] for i in np.random.default_rng([seed, 14]).permutation(len(names))]
    counts = [max(1, round(r * len(names))) for r in ratio[1:]]
    validation, test = order[: counts[0]], order[counts[0] : counts[0] + counts[1]]
    split_of = {name: "train" for name in order}
    split_of.update({name: "validation" for name in validation})
    split_of.update({name: "test" for name in test})
    return {path: split_of[group] for path, group in groups.items()}


def page_rows(
    page_path: Path,
    folder: Path,
    writer: str,
    keep_labels: Sequence[str],
    min_chars: int,
    summary: PagesSummary,
) -> Iterator[SourceRow]:
    """The transcribed lines of one page as source rows (PNG crops); a problem is a row
    carrying its ``error``, for the drop log."""
    relative = page_path.relative_to(folder)
    try:
        page = read_page(page_path)
        summary.pages += 1
        summary.formats[page.format] = summary.formats.get(page.format, 0) + 1
        image = open_page_image(page_image_path(page))
    except BadRow as error:
        yield SourceRow(str(relative), str(relative), None, None, writer, error)
        return
    for line in page.lines:
        summary.lines_found += 1
        name = f"{relative}:{line.id}"
        if line.text is None or not line.text.strip():
            summary.lines_without_text += 1
            continue
        if keep_labels and not set(keep_labels) & set(line.labels):
            summary.lines_filtered_by_label += 1
            continue
        if len(line.text.strip()) < min_chars:
            summary.lines_too_short += 1
            continue
        try:
            crop = cut_line(image, _scaled(page, image, line.polygon))
        except BadRow as error:
            yield SourceRow(name, name, None, line.text, writer, error)
            continue
        yield SourceRow(
            name=name,
            id=f"{relative.with_suffix('').as_posix()}:{line.id}",
            image=encode_png(crop),
            text=line.text,
            writer=writer,
        )


def page_lines_to_read(page_path: Path) -> tuple[Page, list[tuple[str, bytes]], dict[str, str]]:
    """For ``predict``: every line of a page (transcribed or not) cut out as PNG, by id; and
    the lines that could not be cut, by id, with why."""
    page = read_page(page_path)
    image = open_page_image(page_image_path(page))
    crops, problems = [], {}
    for line in page.lines:
        try:
            crops.append((line.id, encode_png(cut_line(image, _scaled(page, image, line.polygon)))))
        except BadRow as error:
            problems[line.id] = str(error)
    return page, crops, problems


def _register_namespaces(xml: Path) -> None:
    """Keep the file's own prefixes (the default namespace above all) when writing it back."""
    for _, (prefix, uri) in ET.iterparse(xml, events=["start-ns"]):
        ET.register_namespace(prefix, uri)


def write_back(page: Page, readings: dict[str, tuple[str, float]], out_path: Path) -> int:
    """A copy of the page's XML with each read line's text (ALTO ``String@CONTENT`` with
    ``WC``; PAGE ``TextEquiv/Unicode`` with ``conf``) in place of what it held; word-level
    elements of those lines are replaced by the one line-level reading. Returns lines written."""
    _register_namespaces(page.xml)
    tree = ET.parse(page.xml)
    root = tree.getroot()
    ns = root.tag[1:].split("}")[0]
    q = f"{{{ns}}}"
    written = 0
    if page.format.startswith("ALTO"):
        for line in root.iter(f"{q}TextLine"):
            if line.get("ID") not in readings:
                continue
            text, confidence = readings[line.get("ID")]
            for child in list(line):
                if child.tag in (f"{q}String", f"{q}SP", f"{q}HYP"):
                    line.remove(child)
            string = ET.SubElement(line, f"{q}String", {"CONTENT": text, "WC": f"{confidence:.4f}"})
            for key in ("HPOS", "VPOS", "WIDTH", "HEIGHT"):
                if line.get(key) is not None:
                    string.set(key, line.get(key))
            written += 1
    else:
        after = {f"{q}TextStyle", f"{q}UserDefined", f"{q}Labels"}  # schema order
        for line in root.iter(f"{q}TextLine"):
            if line.get("id") not in readings:
                continue
            text, confidence = readings[line.get("id")]
            for child in list(line):
                if child.tag in (f"{q}Word", f"{q}TextEquiv"):
                    line.remove(child)
            equiv = ET.Element(f"{q}TextEquiv", {"conf": f"{confidence:.4f}"})
            ET.SubElement(equiv, f"{q}Unicode").text = text
            position = next((i for i, c in enumerate(line) if c.tag in after), len(line))
            line.insert(position, equiv)
            written += 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = out_path.with_name(f".{out_path.name}.partial")
    tree.write(scratch, encoding="UTF-8", xml_declaration=True)
    scratch.replace(out_path)
    return written
