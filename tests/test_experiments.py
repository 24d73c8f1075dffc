"""README's `dvc exp` recipes, run as written in a tiny project; the report; a DVC remote."""

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.params import parse_params
from pipeline.report import render
from tests.conftest import ROOT, tiny_params_dict
from tests.test_repro import _run, dvc, make_project

# train.json / evaluate.json counts that the compare recipe keeps beside CER and WER
OTHER_RUN_COUNTS = {"epochs", "steps", "parameters", "dropped_infeasible_lines", "lines",
                    "unknown_chars"}  # fmt: skip


def readme_recipes() -> dict[str, list[str]]:
    """{name: command lines} of the ```bash blocks marked <!-- recipe: name --> in README."""
    text = (ROOT / "README.md").read_text()
    recipes = {}
    for name, block in re.findall(r"<!-- recipe: ([\w-]+) -->\s*```bash\n(.*?)```", text, re.S):
        recipes[name] = [
            line for line in block.splitlines() if line.strip() and not line.startswith("#")
        ]
    return recipes


def run_line(project: Path, line: str) -> subprocess.CompletedProcess:
    words = shlex.split(line)
    assert words[0] in ("dvc", "python", "htr"), line
    if words[0] == "dvc":
        return _run([sys.executable, "-m", "dvc", *words[1:]], project)
    if words[0] == "htr":  # the console script, from the project's own code
        return _run([sys.executable, "-m", "pipeline.cli", *words[1:]], project)
    return _run([sys.executable, *words[1:]], project)


def wait_for_queue(project: Path, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dvc(project, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        time.sleep(2)
    raise AssertionError(f"queue still busy:\n{status}")


def test_readme_has_the_recipes():
    assert set(readme_recipes()) == {"one-change", "grid", "compare", "keep", "iam-gpu", "predict"}


@pytest.mark.slow
def test_readme_recipes_run_as_written(tmp_path):
    recipes = readme_recipes()
    project = make_project(tmp_path / "project", tiny_params_dict())
    dvc(project, "repro")
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-q", "-m", "baseline run"], project)

    for line in recipes["one-change"]:
        run_line(project, line)
    assert (
        _run(["git", "status", "--porcelain"], project).stdout == ""
    )  # --temp: workspace untouched

    for line in recipes["grid"]:
        run_line(project, line)
    status = wait_for_queue(project)
    assert status.count("Success") == 2, status

    shown = "\n".join(run_line(project, line).stdout for line in recipes["compare"])
    # (on tiny params every run has the same CER, so --only-changed hides the CER columns)
    assert "[lr-low]" in shown and "train.learning_rate" in shown
    experiments = [row for row in shown.splitlines() if "──" in row]  # ├── / └── rows
    assert len(experiments) == 3, shown  # the named run and the two queued ones

    for line in recipes["keep"]:
        run_line(project, line)
    assert "learning_rate: 0.001" in (project / "params.yaml").read_text()
    assert "lr-low-branch" in _run(["git", "branch"], project).stdout

    report = _run(
        [sys.executable, "-m", "pipeline.report", "--base", "HEAD", "--target", "lr-low"], project
    ).stdout
    assert "| params.yaml | **train.learning_rate** | 0.002 | 0.001 | -0.001 | changed |" in report
    assert "### Quality metrics" in report and "test.beam.cer" in report

    shutil.copytree(ROOT / "examples", project / "examples")
    first, second = recipes["predict"]
    printed = run_line(project, first).stdout.splitlines()
    assert [line.split("\t")[0] for line in printed] == [f"examples/line{i}.png" for i in (1, 2, 3)]
    run_line(project, second)
    written = (project / "predictions.csv").read_text().splitlines()
    assert written[0] == "name,text,confidence" and len(written) == 1 + 1 + 4


def test_iam_gpu_recipe_sets_valid_params(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from _runs import params_with, readme_recipe_overrides

    (line,) = readme_recipes()["iam-gpu"]
    overrides = readme_recipe_overrides("iam-gpu")  # what bench/real.py runs as "iam-gpu"
    assert len(overrides) == line.count(" -S ")
    params = parse_params(params_with(overrides), "README iam-gpu recipe")
    assert (
        params.data.source == "hub"
        and params.model.architecture.height == params.data.height == 128
    )
    assert params.model.preset == "reference"
    # the default's one thread and one loader are a 2-vCPU setting: a GPU needs more loaders
    assert params.train.num_workers >= 4 and params.train.cpu_threads == 0
    # from random weights CTC first sits in a blank plateau for epochs: no early stopping
    # (params.yaml's default; this keeps it so for the recipe)
    assert params.train.early_stopping_patience == 0


def test_report_flags_worse_quality_and_lists_speed_apart():
    diff = {
        "params": {
            "params.yaml": {"train.learning_rate": {"old": 0.002, "new": 0.001, "diff": -0.001}}
        },
        "metrics": {
            "metrics/evaluate.json": {
                "test.beam.cer": {"old": 0.1, "new": 0.12, "diff": 0.02},
                "test.greedy.cer": {"old": 0.1, "new": 0.09, "diff": -0.01},
                "test.lines": {"old": 300, "new": 300, "diff": 0},
            },
            "metrics/evaluate_speed.json": {
                "beam_lines_per_second": {"old": 50.0, "new": 40.0, "diff": -10.0}
            },
        },
    }
    text = render(diff, "main", "exp-1")
    assert "1 quality metric(s) got worse." in text
    assert "| metrics/evaluate.json | **test.beam.cer** | 0.1 | 0.12 | 0.02 | **worse** |" in text
    assert "| metrics/evaluate.json | **test.greedy.cer** | 0.1 | 0.09 | -0.01 | better |" in text
    assert "test.lines" not in text  # unchanged, and not a headline figure
    speed_section = text.split("### Speed")[1]
    assert "beam_lines_per_second" in speed_section and "worse" not in speed_section
    assert "dvc plots diff main exp-1" in text


@pytest.mark.slow
def test_push_to_a_local_remote_then_pull_into_a_fresh_clone(tmp_path):
    project = make_project(tmp_path / "project", tiny_params_dict())
    dvc(project, "repro")
    dvc(project, "remote", "add", "-d", "storage", str(tmp_path / "remote"))
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-q", "-m", "run + remote"], project)
    dvc(project, "push")

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "models" / "model.ckpt").exists()
    dvc(clone, "pull")
    for path in ("models/model.ckpt", "data/lines/train.parquet", "reports/predictions.parquet"):
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path
    assert "Data and pipelines are up to date" in dvc(clone, "status").stdout
    metrics = json.loads((clone / "metrics" / "evaluate.json").read_text())
    assert metrics == json.loads((project / "metrics" / "evaluate.json").read_text())


def _leaf_names(data: dict, prefix: str = "") -> list[str]:
    names = []
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        names += _leaf_names(value, name) if isinstance(value, dict) else [name]
    return names


def _changed(data: dict) -> dict:
    """Every number moved, as a new run with other results would move them."""
    return {
        k: _changed(v) if isinstance(v, dict) else (v + 1 if isinstance(v, int | float) else v)
        for k, v in data.items()
    }


def test_the_compare_recipe_shows_quality_and_params_not_speed_or_data_counts(tmp_path):
    project = make_project(tmp_path / "project", tiny_params_dict())
    shutil.copytree(ROOT / "metrics", project / "metrics", ignore=shutil.ignore_patterns("ci"))
    (project / "dvc.yaml").write_text(
        "metrics:\n"
        + "".join(f"  - metrics/{p.name}\n" for p in sorted(ROOT.glob("metrics/*.json")))
    )
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-q", "-m", "a run"], project)
    for path in (project / "metrics").glob("*.json"):
        path.write_text(json.dumps(_changed(json.loads(path.read_text()))))
    params = tiny_params_dict()
    params["train"]["learning_rate"] = 1.0e-3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    (line,) = readme_recipes()["compare"]
    header = run_line(project, line).stdout.splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    quality = {
        name
        for file in ("train.json", "evaluate.json", "lm.json")
        for name in _leaf_names(json.loads((ROOT / "metrics" / file).read_text()))
        if name.endswith(("cer", "wer", "cer_case_insensitive", "wer_last", "cer_last"))
        or name == "validation_bits_per_char"  # the language model's fit
    }
    assert columns[:2] == ["Experiment", "Created"]
    assert quality <= set(columns), header
    assert "train.learning_rate" in columns
    shown_metrics = [c for c in columns[2:] if c != "train.learning_rate"]
    assert not any(c.endswith(("seconds", "_per_second", "memory_mb", "device")) for c in columns)
    assert not any(c.endswith(("px_per_char_mean", ".dropped", "width_px.mean")) for c in columns)
    assert not any(
        c.endswith(("texts_cleaned", "chars_removed", "contexts", "train_words")) for c in columns
    )
    # what is left beside CER/WER are counts that moved (epochs, steps, unknown characters)
    assert all(c in quality or c.split(".")[-1] in OTHER_RUN_COUNTS for c in shown_metrics), header


@pytest.mark.parametrize("variable", ["CI_EXPERIMENT", "REAL_RECIPE"])
def test_makefile_recipes_set_valid_params(variable, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from _runs import makefile_overrides, params_with

    overrides = makefile_overrides(variable)
    assert overrides, variable
    params = parse_params(params_with(overrides), f"Makefile {variable}")
    if variable == "REAL_RECIPE":
        assert params.data.source == "hub"  # the folder and the checkpoint come from `make real`


def test_char_recall_counts_a_character_read_only_where_the_alignment_matches_it(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from char_recall import aligned_pairs, recall

    assert aligned_pairs("abc", "abc") == [(0, 0), (1, 1), (2, 2)]
    assert aligned_pairs("abc", "ac") == [(0, 0), (2, 1)]  # b deleted
    rows = [
        {"truth": "été", "beam": "ete"},  # both é read as e
        {"truth": "ça été", "beam": "ça étéé"},  # an é inserted: the three read, no more
        {"truth": "né", "beam": "é"},  # n deleted, é read
    ]
    total, read = recall(rows, "beam", {"é", "ç"})
    assert total == {"é": 5, "ç": 1} and read == {"é": 3, "ç": 1}


def test_adabn_statistics_are_the_average_over_lines_each_a_batch_alone(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import torch
    from adabn import estimate_statistics, with_statistics

    class Normed(torch.nn.Module):  # the recognizer's network signature: (images, widths)
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.BatchNorm2d(1)

        def forward(self, images, widths):
            return self.norm(images), widths

    network = Normed().eval()
    network.norm.running_mean.fill_(5.0)
    network.norm.running_var.fill_(4.0)
    # two lines of different widths (6 and 4 pixels): means 1 and 3, unbiased variances 0
    # and 4 (values 1, 5, 3, 3 about 3: squares 4 + 4 over 4 - 1 pixels = 8 / 3)
    lines = [torch.ones(1, 2, 3), torch.tensor([[[1.0, 5.0], [3.0, 3.0]]])]
    var_second = 8 / 3
    [(mean, var)] = estimate_statistics(network, lines)
    assert torch.allclose(mean, torch.tensor([2.0]))  # (1 + 3) / 2, not weighted by pixels
    assert torch.allclose(var, torch.tensor([var_second / 2]))  # (0 + v) / 2: within lines
    assert float(network.norm.running_mean) == 5.0  # the network itself is left as it was
    assert not network.norm.training
    half = with_statistics(network, [(mean, var)], mix=0.5)
    assert torch.allclose(half.norm.running_mean, torch.tensor([3.5]))  # (5 + 2) / 2
    assert torch.allclose(half.norm.running_var, torch.tensor([(4.0 + var_second / 2) / 2]))
    assert float(network.norm.running_mean) == 5.0 and not half.norm.training


def test_ensemble_means_are_log_softmaxes_and_agree_where_the_models_agree(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import math

    import torch
    from ensemble import mean_of_log_probabilities, mean_of_probabilities

    one = torch.log(torch.tensor([[[0.6, 0.4]]]))  # (T, B, K) = (1, 1, 2)
    two = torch.log(torch.tensor([[[0.2, 0.8]]]))
    assert torch.allclose(mean_of_probabilities([one, two]).exp(), torch.tensor([0.4, 0.6]))
    geometric = torch.tensor([math.sqrt(0.12), math.sqrt(0.32)])
    assert torch.allclose(mean_of_log_probabilities([one, two]).exp(), geometric / geometric.sum())
    for mean in (mean_of_probabilities, mean_of_log_probabilities):
        assert torch.allclose(mean([one, one]), one)  # one model twice: that model


def test_ensemble_pick_keeps_the_text_likeliest_under_both_models(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import torch
    from ensemble import pick_by_joint_likelihood

    from pipeline.charset import Charset

    charset = Charset(("a", "b"))  # classes: blank, a, b

    def frames_of(blank: float, a: float, b: float) -> torch.Tensor:  # (T=3, B=1, K=3)
        return torch.log(torch.tensor([blank, a, b])).expand(3, 1, 3)

    weakly_b = frames_of(0.1, 0.4, 0.5)  # its own best text is "b", barely
    strongly_a = frames_of(0.05, 0.9, 0.05)
    frames = torch.tensor([3])
    chosen = pick_by_joint_likelihood([weakly_b, strongly_a], frames, [["b"], ["a"]], charset)
    assert chosen == ["a"]  # the second model's text wins on the two models together
    assert pick_by_joint_likelihood([weakly_b], frames, [["b"], ["a"]], charset) == ["b"]


def test_subset_copy_keeps_the_same_share_of_each_writers_lines_in_order(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from subset_copy import kept_rows

    writers = ["a", "b", "a", "a", None, "b", "a", None, None]
    # a: rows 0 2 3 6 -> 0 2; b: 1 5 -> 1; no writer: 4 7 8 -> 4 7 (ceil of 1.5)
    assert kept_rows(writers, 0.5) == [0, 1, 2, 4, 7]
    assert kept_rows(writers, 1.0) == list(range(9))


def test_shear_leans_a_vertical_stroke_by_k_pixels_a_row_and_widens_the_line_to_keep_it(
    monkeypatch,
):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import torch
    from tta_shear import sheared

    line = torch.zeros(1, 8, 10)  # (1, H, W): ink 1, paper 0
    line[0, :, 4] = 1.0  # a vertical stroke in column 4
    assert sheared(line, 0.0) is line
    for k in (0.5, -0.5):
        leaned = sheared(line, k)
        assert leaned.shape == (1, 8, 14)  # W + ceil(|k| H): no ink cut at either end
        # the stroke's centre in each row: 4.5 + 2 (half the widening) + k (row's centre - H/2),
        # so k > 0 leans its top left; bilinear puts 3/4 of it in the nearer of two pixels
        centres = [6.5 + k * (row + 0.5 - 4) for row in range(8)]
        assert leaned[0].argmax(dim=1).tolist() == [round(c - 0.5) for c in centres]
        assert torch.allclose(leaned.sum(), line.sum(), atol=1e-4)  # the ink is kept


def test_real_bench_records_each_decoder_and_the_lines_read_as_stored(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import json

    from real import recorded

    def scores(cer: float) -> dict:
        return {"cer": cer, "wer": 2 * cer, "cer_case_insensitive": cer}

    split = {
        "greedy": scores(0.3),
        "beam": scores(0.2),
        "as_stored": {"greedy": scores(0.35), "beam": scores(0.25)},
        "lines": 142,
    }
    (tmp_path / "evaluate.json").write_text(json.dumps({"validation": split, "test": split}))
    (tmp_path / "train_speed.json").write_text(json.dumps({"fit_seconds": 1800.0}))
    (tmp_path / "train.json").write_text(json.dumps({"epochs": 40, "parameters": 1_200_000}))
    row = recorded("run", {}, tmp_path, tmp_path, {"train": {"init_from": ""}})
    assert row["train_minutes"] == 30.0 and row["pretrained_md5"] is None
    assert row["validation_beam_cer"] == 0.2 and row["test_greedy_wer"] == 0.6
    assert row["test_as_stored_beam_cer"] == 0.25  # a nested decoder table is not a decoder
    assert not any(key.startswith(("validation_lines", "test_as_stored_cer")) for key in row)
