"""The pages source: ALTO and PAGE XML beside page images, read into lines and written back.

Fixtures are hand-written XML in tests/fixtures/pages; the page images are drawn here, with
ink where the tests need to know what a crop holds.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.lines import BadRow, read_split
from pipeline.pages import (
    PagesLayoutError,
    assign_splits,
    cut_line,
    page_group,
    read_page,
    write_back,
)
from pipeline.pull import pull
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "pages"
SHARED_PAGES = ROOT.parent / "shared" / "data" / "poilus-alto-sample"
GOOD = ("alto_v4_polygons", "alto_v2_boxes", "page_2019_polygons", "page_2013_boxes")
IMAGES = {
    "alto_v4_polygons": "page_a.png",
    "alto_v2_boxes": "page_b.png",
    "page_2019_polygons": "page_c.png",
    "page_2013_boxes": "page_d.png",
    "bad_lines": "page_e.png",
    "bad_name_mismatch": "bad_name_mismatch.png",
}


def draw_page(path: Path) -> None:
    """400x200 white paper; a black bar across y 50-59 (x 20-379), inks every fixture line."""
    image = Image.new("L", (400, 200), 255)
    draw = ImageDraw.Draw(image)
    for top in (30, 50, 110, 130, 160):
        draw.rectangle((20, top, 379, top + 9), fill=0)
    image.save(path)


def pages_folder(root: Path, names, split_of=None) -> Path:
    """The fixtures ``names`` with their images, in ``root`` or its split folders."""
    for name in names:
        folder = root / (split_of[name] if split_of else "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / f"{name}.xml", folder / f"{name}.xml")
        if name in IMAGES:
            draw_page(folder / IMAGES[name])
        if name == "bad_undecodable":
            (folder / "page_f.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_alto_v4_lines_text_polygons_and_labels():
    page = read_page(FIXTURES / "alto_v4_polygons.xml")
    assert page.format == "ALTO v4" and page.image_name == "page_a.png" and page.size == (400, 200)
    assert [line.id for line in page.lines] == ["l1", "l2", "l3"]
    assert [line.text for line in page.lines] == ["Ceci est", "mon testa-", None]
    assert page.lines[0].polygon[-1] == (20.0, 40.0)
    assert page.lines[0].labels == ("HeadingLine", "MainZone")
    assert page.lines[1].labels == ("DefaultLine", "MainZone")


def test_alto_v2_boxes_become_rectangles():
    page = read_page(FIXTURES / "alto_v2_boxes.xml")
    assert page.format == "ALTO v2"
    assert [line.text for line in page.lines] == ["Paris, le 7 mars", "1915"]
    assert page.lines[0].polygon == ((30, 30), (330, 30), (330, 80), (30, 80))


def test_page_xml_2019_and_2013():
    page = read_page(FIXTURES / "page_2019_polygons.xml")
    assert page.format == "PAGE 2019" and page.image_name == "page_c.png"
    assert [line.text for line in page.lines] == ["Je donne et lègue", "Imprimé"]
    assert page.lines[0].labels == ("handwritten", "paragraph")
    assert page.lines[1].labels == ("printed", "paragraph")
    old = read_page(FIXTURES / "page_2013_boxes.xml")
    assert old.format == "PAGE 2013" and old.size == (800, 400)
    assert old.lines[0].polygon[0] == (40.0, 40.0)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("bad_malformed", "malformed_xml"), ("bad_unknown_namespace", "unknown_namespace")],
)
def test_unreadable_xml_is_a_bad_row_naming_the_file(name, reason):
    with pytest.raises(BadRow) as caught:
        read_page(FIXTURES / f"{name}.xml")
    assert caught.value.reason == reason and f"{name}.xml" in caught.value.detail


def test_a_polygon_crop_sets_the_outside_to_paper():
    image = Image.new("L", (400, 200), 255)
    ImageDraw.Draw(image).rectangle((20, 50, 379, 59), fill=0)
    polygon = read_page(FIXTURES / "alto_v4_polygons.xml").lines[0].polygon
    crop = np.asarray(cut_line(image, polygon))
    assert crop.shape == (40, 360)  # the polygon's box: x 20-380, y 20-60
    assert crop[57 - 20, 25 - 20] == 255  # ink below the slanted lower edge: masked out
    assert crop[55 - 20, 300 - 20] == 0  # ink inside the polygon: kept
    assert crop[5, 5] == 255


@pytest.mark.parametrize(
    ("polygon", "reason"),
    [
        (((20, 100), (380, 140)), "degenerate_polygon"),
        (((20, 150), (200, 150), (380, 150)), "degenerate_polygon"),
        (((1000, 20), (1300, 20), (1300, 60), (1000, 60)), "line_outside_image"),
    ],
)
def test_bad_polygons_are_bad_rows(polygon, reason):
    with pytest.raises(BadRow) as caught:
        cut_line(Image.new("L", (400, 200), 255), polygon)
    assert caught.value.reason == reason


def test_groups_come_from_the_path_and_splits_never_split_a_group():
    regex = r"([^/]+?)(?:[-_]\d+)?$"
    assert page_group(Path("will_0005-1.xml"), regex) == "will_0005"
    assert page_group(Path("wills/will_0005_2.xml"), regex) == "will_0005"
    assert page_group(Path("writer_a/p1.xml"), r"^([^/]+)/") == "writer_a"  # a folder level
    pages = {Path(f"w{g}_{p}.xml"): f"w{g}" for g in range(10) for p in range(3)}
    splits = assign_splits(pages, dict.fromkeys(pages), (0.8, 0.1, 0.1), seed=1)
    by_group = {}
    for path, split in splits.items():
        by_group.setdefault(pages[path], set()).add(split)
    assert all(len(s) == 1 for s in by_group.values())
    assert sorted(
        sum(1 for s in by_group.values() if split in s) for split in ("train", "validation", "test")
    ) == [1, 1, 8]
    assert assign_splits(pages, dict.fromkeys(pages), (0.8, 0.1, 0.1), seed=1) == splits
    with pytest.raises(PagesLayoutError, match="cannot fill three splits"):
        assign_splits({Path("a.xml"): "a", Path("b.xml"): "b"}, {}, (0.8, 0.1, 0.1), seed=1)
    mixed = {Path("train/a.xml"): "train", Path("b.xml"): None}
    with pytest.raises(PagesLayoutError, match=r"b\.xml is in no train/validation/test folder"):
        assign_splits({p: "g" for p in mixed}, mixed, (0.8, 0.1, 0.1), seed=1)


def _pages_params(tiny_params, folder: Path, **data):
    return dataclasses.replace(
        tiny_params,
        data=dataclasses.replace(
            tiny_params.data, source="pages", pages_dir=str(folder), max_bad_fraction=1.0, **data
        ),
    )


def test_pull_reads_pages_counts_every_bad_input_and_fills_writers(tmp_path, tiny_params):
    split_of = {
        "alto_v4_polygons": "train",
        "alto_v2_boxes": "train",
        "bad_malformed": "train",
        "bad_unknown_namespace": "train",
        "bad_missing_image": "train",
        "bad_name_mismatch": "train",
        "bad_lines": "train",
        "bad_undecodable": "train",
        "page_2019_polygons": "validation",
        "page_2013_boxes": "test",
    }
    folder = pages_folder(tmp_path / "pages", split_of, split_of)
    params = _pages_params(tiny_params, folder)
    metrics = pull(params, tmp_path / "lines", tmp_path / "data.json")

    train = read_split(tmp_path / "lines" / "train.parquet").to_pylist()
    assert [row["text"] for row in train] == [
        "Paris, le 7 mars",
        "1915",
        "Ceci est",
        "mon testa-",
        "bonne ligne",
    ]  # fmt: skip  (files in sorted order: alto_v2, alto_v4, bad_lines)
    assert {row["writer"] for row in train} == {"alto_v4_polygons", "alto_v2_boxes", "bad_lines"}
    assert train[2]["id"] == "train/alto_v4_polygons:l1"
    assert all(row["height"] == tiny_params.data.height for row in train)
    dropped = metrics["train"]["dropped_by_reason"]
    expected = {
        "malformed_xml": 1,
        "unknown_namespace": 1,
        "missing_image": 1,
        "image_name_mismatch": 1,
        "undecodable_image": 1,
        "line_outside_image": 1,
        "degenerate_polygon": 2,
    }
    assert {k: v for k, v in dropped.items() if v} == expected
    assert metrics["pages"]["pages"] == 8  # the two unparseable ones are not pages
    assert metrics["pages"]["lines_without_text"] == 1  # l3: a line to read, not to train on
    assert metrics["pages"]["formats"] == {
        "ALTO v2": 1,
        "ALTO v3": 1,
        "ALTO v4": 4,
        "PAGE 2013": 1,
        "PAGE 2019": 1,
    }
    assert json.loads((tmp_path / "data.json").read_text()) == metrics
    test = read_split(tmp_path / "lines" / "test.parquet").to_pylist()
    assert [row["text"] for row in test] == ["ma fiancée"]
    # coordinates of an 800x400 scan on its 400x200 copy: the crop is 360x40, not cut short
    assert test[0]["width"] == round(360 * tiny_params.data.height / 40)


def test_pull_keeps_lines_by_label_and_length(tmp_path, tiny_params):
    split_of = {
        "alto_v4_polygons": "train",
        "page_2019_polygons": "validation",
        "page_2013_boxes": "test",
    }
    folder = pages_folder(tmp_path / "pages", split_of, split_of)
    params = _pages_params(
        tiny_params,
        folder,
        pages_line_labels=("DefaultLine", "handwritten", "paragraph"),
        pages_min_chars=9,
    )
    metrics = pull(params, tmp_path / "lines", tmp_path / "data.json")
    assert [r["text"] for r in read_split(tmp_path / "lines" / "train.parquet").to_pylist()] == [
        "mon testa-"
    ]
    assert metrics["pages"]["lines_filtered_by_label"] == 1  # "Ceci est" is a HeadingLine
    assert metrics["pages"]["lines_too_short"] == 1  # "Imprimé": 7 characters


def test_all_lines_bad_is_a_clear_error_naming_the_folder(tmp_path, tiny_params):
    from pipeline.lines import TooManyBadRows

    split_of = {
        "bad_malformed": "train",
        "bad_missing_image": "validation",
        "bad_unknown_namespace": "test",
    }
    folder = pages_folder(tmp_path / "pages", split_of, split_of)
    params = _pages_params(tiny_params, folder)
    with pytest.raises(TooManyBadRows, match=f"{folder}: split 'train' has no usable line"):
        pull(params, tmp_path / "lines", tmp_path / "data.json")
    assert not (tmp_path / "lines").exists() and not (tmp_path / "data.json").exists()


@pytest.mark.parametrize("name", ["alto_v4_polygons", "page_2019_polygons"])
def test_text_written_back_reads_back(tmp_path, name):
    page = read_page(FIXTURES / f"{name}.xml")
    readings = {page.lines[0].id: ("lu par la machine", 0.875)}
    out = tmp_path / f"{name}.xml"
    assert write_back(page, readings, out) == 1
    again = read_page(out)
    assert again.lines[0].text == "lu par la machine"
    # lines not read keep what they held; coordinates are untouched
    assert [line.text for line in again.lines[1:]] == [line.text for line in page.lines[1:]]
    assert [line.polygon for line in again.lines] == [line.polygon for line in page.lines]
    text = out.read_text()
    assert ('WC="0.8750"' if name.startswith("alto") else 'conf="0.8750"') in text
    assert "ns0:" not in text  # the file keeps its default namespace


@pytest.mark.skipif(not SHARED_PAGES.is_dir(), reason="../shared/data is not beside the project")
def test_the_shared_alto_pages(tmp_path, tiny_params):
    pages = sorted(SHARED_PAGES.glob("*.xml"))
    folder = tmp_path / "pages"
    for split, xml in zip(("train", "validation", "test"), pages, strict=True):
        (folder / split).mkdir(parents=True)
        for source in (xml, xml.with_suffix(".jpg")):
            (folder / split / source.name).symlink_to(source)
    metrics = pull(_pages_params(tiny_params, folder), tmp_path / "lines", tmp_path / "data.json")
    assert metrics["pages"]["pages"] == 3 and metrics["pages"]["lines_found"] == 31
    assert sum(metrics[split]["lines"] for split in ("train", "validation", "test")) == 31
    assert all(metrics[split]["dropped"] == 0 for split in ("train", "validation", "test"))
