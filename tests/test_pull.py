import dataclasses
import io
import json
import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import hub
from pipeline.charset import Charset
from pipeline.lines import SCHEMA, SPLITS, TooManyBadRows, atomic_directory, read_split
from pipeline.params import parse_params
from pipeline.pull import pull
from tests.conftest import ROOT, jpeg_bytes, png_bytes, tiny_params_dict, write_hub_layout


def _hub_params(params, root, max_bad_fraction=0.5):
    data = dataclasses.replace(
        params.data, source="hub", hub_id=str(root), max_bad_fraction=max_bad_fraction
    )
    return dataclasses.replace(params, data=data)


def _good_rows(split: str, n: int):
    return [(jpeg_bytes(100 + 10 * i, 64), f"{split} line {i}") for i in range(n)]


def test_pull_from_local_hub_layout(tmp_path, tiny_params):
    root = write_hub_layout(tmp_path / "hub", {split: _good_rows(split, 3) for split in SPLITS})
    metrics = pull(_hub_params(tiny_params, root), tmp_path / "lines", tmp_path / "data.json")

    for split in SPLITS:
        table = pq.read_table(tmp_path / "lines" / f"{split}.parquet")
        assert table.schema.equals(SCHEMA)
        rows = table.to_pylist()
        assert [row["text"] for row in rows] == [f"{split} line {i}" for i in range(3)]
        assert [row["id"] for row in rows] == [f"{split}-{i:06d}" for i in range(3)]
        for i, row in enumerate(rows):
            image = Image.open(io.BytesIO(row["image"]))
            assert image.format == "PNG" and image.mode == "L"
            height = tiny_params.data.height
            # aspect ratio kept: source (100 + 10 i) x 64
            assert image.size == (round((100 + 10 * i) * height / 64), height)
            assert (row["width"], row["height"]) == image.size
            assert row["writer"] is None
    charset = Charset.load(tmp_path / "lines" / "charset.json")
    assert "".join(charset.characters) == " 012aeilnrt"
    assert json.loads((tmp_path / "data.json").read_text()) == metrics
    assert metrics["train"]["lines"] == 3 and metrics["train"]["dropped"] == 0
    # "validation"/"test" have letters the train charset lacks ("v", "d", "o", "s", "e")
    assert metrics["validation"]["lines_with_chars_outside_charset"] == 3


def _bad_rows():
    truncated = png_bytes(200, 60)[:40]
    return [
        (b"not an image at all", "corrupt bytes"),
        (truncated, "truncated png"),
        (b"", "empty bytes"),
        (png_bytes(300, 1), "one pixel high"),
        (png_bytes(100, 40), ""),
        (png_bytes(100, 40), "   \t "),
    ]


def test_bad_rows_are_dropped_counted_and_warned(tmp_path, tiny_params, caplog):
    splits = {split: _good_rows(split, 10) for split in SPLITS}
    splits["train"] += _bad_rows()
    root = write_hub_layout(tmp_path / "hub", splits)
    with caplog.at_level(logging.WARNING):
        metrics = pull(_hub_params(tiny_params, root), tmp_path / "lines", tmp_path / "data.json")

    assert metrics["train"]["lines"] == 10
    assert metrics["train"]["dropped"] == 6
    assert metrics["train"]["dropped_by_reason"] == {
        "missing_text": 0,
        "empty_text": 2,
        "empty_image": 1,
        "undecodable_image": 2,
        "image_too_small": 1,
        "image_too_large": 0,
        "too_wide": 0,
        **dict.fromkeys(
            ["malformed_xml", "unknown_namespace", "missing_image", "image_name_mismatch",
             "line_outside_image", "degenerate_polygon"], 0,
        ),  # the pages source's reasons: listed for every source, so diffs line up
    }  # fmt: skip
    assert metrics["validation"]["dropped"] == 0
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "train: dropped 6 row(s)" in warning
    assert "train row 10" in warning  # examples name the rows
    assert read_split(tmp_path / "lines" / "train.parquet").num_rows == 10


def test_too_many_bad_rows_fail_and_keep_old_output(tmp_path, tiny_params):
    good = {split: _good_rows(split, 2) for split in SPLITS}
    out = tmp_path / "lines"
    pull(
        _hub_params(tiny_params, write_hub_layout(tmp_path / "good", good)),
        out,
        tmp_path / "m.json",
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    bad = dict(good, validation=_good_rows("validation", 2) + _bad_rows()[:1])  # 1 of 3 bad
    root = write_hub_layout(tmp_path / "bad", bad)
    with pytest.raises(
        TooManyBadRows, match=r"1 of 3 rows of split 'validation'.*33\.3% > data\.max_bad_fraction"
    ):
        pull(_hub_params(tiny_params, root, max_bad_fraction=0.2), out, tmp_path / "m2.json")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-replaced
    assert not list(tmp_path.glob(".lines.partial-*"))
    assert not (tmp_path / "m2.json").exists()


def test_rgba_16bit_and_palette_images_become_grayscale(tmp_path, tiny_params):
    def encoded(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    rgba = Image.new("RGBA", (80, 40), (0, 0, 0, 0))  # transparent: must become white paper
    sixteen = Image.fromarray(np.full((40, 80), 40000, dtype=np.uint16))
    palette = Image.new("P", (80, 40), 3)
    splits = {split: _good_rows(split, 1) for split in SPLITS}
    splits["train"] += [
        (encoded(rgba), "rgba"),
        (encoded(sixteen), "sixteen"),
        (encoded(palette), "palette"),
    ]
    pull(
        _hub_params(tiny_params, write_hub_layout(tmp_path / "hub", splits)),
        tmp_path / "lines",
        tmp_path / "m.json",
    )
    rows = read_split(tmp_path / "lines" / "train.parquet").to_pylist()
    assert [row["text"] for row in rows] == ["train line 0", "rgba", "sixteen", "palette"]
    for row in rows:
        assert Image.open(io.BytesIO(row["image"])).mode == "L"
    assert np.asarray(Image.open(io.BytesIO(rows[1]["image"]))).min() == 255


def test_text_is_nfc_and_whitespace_normalized(tmp_path, tiny_params):
    splits = {split: _good_rows(split, 1) for split in SPLITS}
    splits["train"].append((jpeg_bytes(), "  cafe\u0301   au\tlait "))
    pull(
        _hub_params(tiny_params, write_hub_layout(tmp_path / "hub", splits)),
        tmp_path / "lines",
        tmp_path / "m.json",
    )
    texts = read_split(tmp_path / "lines" / "train.parquet").column("text").to_pylist()
    assert texts[-1] == "caf\u00e9 au lait"


def test_missing_split_is_a_clear_error(tmp_path, tiny_params):
    root = write_hub_layout(
        tmp_path / "hub", {"train": _good_rows("train", 1), "test": _good_rows("test", 1)}
    )
    with pytest.raises(hub.SourceLayoutError, match=r"missing split\(s\) \['validation'\]"):
        pull(_hub_params(tiny_params, root), tmp_path / "lines", tmp_path / "m.json")


def test_offline_hub_id_fails_with_advice(tmp_path, tiny_params, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setattr(hub, "_hub_reachable", lambda: False)
    monkeypatch.setattr(
        "datasets.config.HF_DATASETS_CACHE", tmp_path / "empty-hf-cache" / "datasets"
    )
    params = dataclasses.replace(
        tiny_params, data=dataclasses.replace(tiny_params.data, source="hub")
    )
    with pytest.raises(hub.HubUnavailable) as caught:
        pull(params, tmp_path / "lines", tmp_path / "m.json")
    message = str(caught.value)
    assert "Teklia/IAM-line" in message and "not reachable" in message
    assert "data.source=synthetic" in message and "local folder" in message
    assert not (tmp_path / "lines").exists()


def test_atomic_directory_cleans_stale_scratch_and_keeps_target_on_error(tmp_path):
    target = tmp_path / "out"
    stale = tmp_path / ".out.partial-99999"
    stale.mkdir()
    (stale / "half.parquet").write_bytes(b"half")
    with atomic_directory(target) as scratch:
        (scratch / "a").write_text("1")
    assert not stale.exists() and (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_directory(target) as scratch:
        (scratch / "a").write_text("2")
        raise RuntimeError("killed")
    assert (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


POILUS = ROOT.parent / "shared" / "data" / "poilus-b1"


@pytest.mark.skipif(not POILUS.exists(), reason="real lines in ../shared/data are not here")
def test_real_lines_pull_with_their_accents_at_the_recipe_height(tmp_path):
    """A slice of poilus-b1 (CC BY 4.0, CREMMA-AN-TestamentsDePoilus) through the hub path."""
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        rows = pd.read_parquet(POILUS / "data" / f"{split}.parquet").head(40)
        rows.to_parquet(hub / f"{split}-00000-of-00001.parquet")
    mapping = tiny_params_dict()
    mapping["data"].update(source="hub", hub_id=str(tmp_path / "hub"), height=64)
    metrics = pull(parse_params(mapping), tmp_path / "lines", tmp_path / "data.json")
    assert metrics["train"]["lines"] == 40 and metrics["train"]["dropped"] == 0
    texts = read_split(tmp_path / "lines" / "train.parquet").column("text").to_pylist()
    source = pd.read_parquet(POILUS / "data" / "train.parquet").head(40)["text"].tolist()
    assert texts == [" ".join(t.split()) for t in source]  # accents, ’ and ° kept as written
    writers = read_split(tmp_path / "lines" / "train.parquet").column("writer").to_pylist()
    assert all(writers)  # the folder's writer column is carried
