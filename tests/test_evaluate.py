"""The evaluate stage and the predict command on a tiny checkpoint."""

import dataclasses
import io
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.charlm import build_lm
from pipeline.evaluation import EvaluationOutputs, evaluate
from pipeline.layout import LinesFolder
from pipeline.lines import read_split, write_split
from pipeline.predict import format_predictions, predict
from pipeline.pull import pull
from pipeline.recognizer import Recognizer
from pipeline.training import TrainOutputs, train
from tests.conftest import ROOT, png_bytes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for one epoch on tiny synthetic lines (module-wide: ~10 s)."""
    from pipeline.params import parse_params
    from tests.conftest import tiny_params_dict

    params = parse_params(tiny_params_dict())
    root = tmp_path_factory.mktemp("trained")
    pull(params, root / "lines", root / "data.json")
    outputs = TrainOutputs(
        root / "model.ckpt",
        root / "checkpoints",
        root / "dvclive",
        root / "train.json",
        root / "train_speed.json",
    )
    train(params, LinesFolder(root / "lines"), outputs)
    return params, root


def _evaluate(params, root, out, lm=None):
    recognizer = Recognizer.load(root / "model.ckpt", device="cpu", lm=lm, params=params)
    outputs = EvaluationOutputs(
        out / "evaluate.json",
        out / "speed.json",
        out / "predictions.parquet",
        out / "plots",
        out / "worst.png",
    )
    return evaluate(recognizer, LinesFolder(root / "lines"), outputs, params.evaluate.worst_lines)


def test_evaluate_writes_metrics_predictions_and_plots(trained, tmp_path):
    params, root = trained
    metrics = _evaluate(params, root, tmp_path)
    assert json.loads((tmp_path / "evaluate.json").read_text()) == metrics
    for split in ("validation", "test"):
        for decoder in ("greedy", "beam"):
            scores = metrics[split][decoder]
            assert set(scores) == {"cer", "wer", "cer_case_insensitive"}
            assert 0.0 <= scores["cer_case_insensitive"] <= scores["cer"] + 1e-9
        assert metrics[split]["lines"] == 4
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["greedy_lines_per_second"] > 0 and speed["beam_lines_per_second"] > 0
    assert speed["decode_processes"] == 1 and speed["read_seconds"] > 0

    predictions = pq.read_table(tmp_path / "predictions.parquet").to_pylist()
    assert len(predictions) == 8
    test_lines = read_split(root / "lines" / "test.parquet")
    assert [p["truth"] for p in predictions if p["split"] == "test"] == test_lines.column(
        "text"
    ).to_pylist()
    assert all(0.0 <= p["confidence"] <= 1.0 for p in predictions)
    by_writer = json.loads((tmp_path / "plots" / "cer_by_writer.json").read_text())
    assert {row["group"] for row in by_writer} <= set(params.synthetic.test_fonts)
    assert sum(row["lines"] for row in by_writer) == 4
    assert Image.open(tmp_path / "worst.png").height > 64


def test_as_stored_holds_what_reading_each_line_once_gives(trained, tmp_path):
    """evaluate.scales reads each line at several sizes; ``as_stored`` scores the line as
    stored from the same pass, which must be exactly what ``scales: [1.0]`` scores."""
    params, root = trained
    assert len(params.evaluate.scales) > 1  # params.yaml's sizes
    several = _evaluate(params, root, tmp_path / "several")
    once_params = dataclasses.replace(
        params, evaluate=dataclasses.replace(params.evaluate, scales=(1.0,))
    )
    once = _evaluate(once_params, root, tmp_path / "once")
    for split in ("validation", "test"):
        decoders = {"greedy", "beam"}
        assert several[split]["as_stored"] == {name: once[split][name] for name in decoders}
        assert once[split]["as_stored"] == {name: once[split][name] for name in decoders}


def test_characters_outside_the_model_charset_are_counted_not_a_crash(trained, tmp_path):
    params, root = trained
    lines = tmp_path / "lines"
    lines.mkdir()
    for split in ("validation", "test"):
        rows = read_split(root / "lines" / f"{split}.parquet").to_pylist()
        rows[0]["text"] += " ☃€"
        write_split(rows, lines / f"{split}.parquet")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.ckpt").write_bytes((root / "model.ckpt").read_bytes())
    (tmp_path / "model" / "lines").symlink_to(lines)
    before = _evaluate(params, root, tmp_path / "before")
    metrics = _evaluate(params, tmp_path / "model", tmp_path / "out")
    assert metrics["test"]["unknown_chars"] == before["test"]["unknown_chars"] + 2
    assert metrics["test"]["lines_with_unknown_chars"] >= 1
    rows = pq.read_table(tmp_path / "out" / "predictions.parquet").to_pylist()
    assert rows[4]["truth"].endswith(" ☃€") and rows[4]["beam_cer"] > 0  # scored as errors


def test_predict_reads_files_folders_and_parquet_and_reports_bad_files(trained, tmp_path):
    _, root = trained
    rows = read_split(root / "lines" / "test.parquet").to_pylist()
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, row in enumerate(rows[:2]):
        Image.open(io.BytesIO(row["image"])).convert("RGB").save(folder / f"line{i}.jpg")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    single = tmp_path / "single.png"
    single.write_bytes(rows[2]["image"])
    settings = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings["evaluate"]["batch_size"] = 3  # several batches, sorted by width
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))

    inputs = [folder, single, root / "lines" / "test.parquet", tmp_path / "missing.png"]
    for decoder in ("greedy", "beam"):
        predictions = predict(root / "model.ckpt", inputs, decoder, tmp_path / "params.yaml")
        names = [p.name for p in predictions]
        assert names[:3] == [
            str(folder / "corrupt.png"),
            str(folder / "line0.jpg"),
            str(folder / "line1.jpg"),
        ]
        assert len(predictions) == 3 + 1 + 4 + 1
        errors = {p.name: p.error for p in predictions if p.error}
        assert set(errors) == {str(folder / "corrupt.png"), str(tmp_path / "missing.png")}
        assert errors[str(folder / "corrupt.png")].startswith("undecodable_image")
        assert all(isinstance(p.text, str) for p in predictions if not p.error)
    as_json = json.loads(format_predictions(predictions, "json"))
    assert len(as_json) == 7 and set(as_json[0]) == {"name", "text", "confidence", "error"}
    assert format_predictions(predictions, "csv").splitlines()[0] == "name,text,confidence"


def test_predict_command_exits_non_zero_but_reads_the_rest(trained, tmp_path):
    _, root = trained
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(120, 32))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.predict", str(root / "model.ckpt"), str(good), str(bad),
         "--decoder", "greedy", "--format", "csv"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == "name,text,confidence"
    assert result.stdout.splitlines()[1].startswith(str(good))
    assert f"[predict] error: {bad}: undecodable_image" in result.stderr
    assert "1 of 2 input(s) could not be read" in result.stderr
    assert "Traceback" not in result.stderr


def test_beam_lm_is_scored_beside_greedy_and_beam(trained, tmp_path):
    params, root = trained
    build_lm(
        params.lm.order, LinesFolder(root / "lines"), root / "lm.json", root / "lm_metrics.json"
    )
    lm_metrics = json.loads((root / "lm_metrics.json").read_text())
    assert lm_metrics["order"] == params.lm.order and lm_metrics["validation_bits_per_char"] > 0
    metrics = _evaluate(params, root, tmp_path, lm=root / "lm.json")
    for split in ("validation", "test"):
        assert set(metrics[split]["beam_lm"]) == {"cer", "wer", "cer_case_insensitive"}
    rows = pq.read_table(tmp_path / "predictions.parquet").to_pylist()
    assert {"beam_lm", "beam_lm_cer"} <= set(rows[0])


def test_predict_writes_the_text_back_into_alto_and_page_files(trained, tmp_path):
    from pipeline.pages import read_page
    from pipeline.predict import predict_pages
    from tests.test_pages import pages_folder

    _, root = trained
    folder = pages_folder(
        tmp_path / "pages", ["alto_v4_polygons", "page_2019_polygons", "bad_missing_image"]
    )
    out = tmp_path / "read"
    predictions = predict_pages(root / "model.ckpt", [folder], "greedy", ROOT / "params.yaml", out)
    errors = [p for p in predictions if p.error]
    assert [p.name for p in errors] == [str(folder / "bad_missing_image.xml")]
    read = {p.name: p for p in predictions if not p.error}
    assert len(read) == 3 + 2  # every line, transcribed in the XML or not (l3 is not)
    for name in ("alto_v4_polygons", "page_2019_polygons"):
        written = read_page(out / f"{name}.xml")
        for line in written.lines:
            prediction = read[f"{folder / name}.xml:{line.id}"]
            assert line.text == prediction.text  # the recognized text, not the old one
            assert 0.0 <= prediction.confidence <= 1.0
    assert not (out / "bad_missing_image.xml").exists()
