"""The pipeline as users run it: `dvc repro` in a fresh git repo, on tiny params."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, tiny_params_dict

PROJECT_FILES = ("pipeline", "stages", "dvc.yaml")


def _env() -> dict:
    env = dict(os.environ)
    # `python` in dvc.yaml's cmds must be this interpreter (the project venv).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def _run(args, cwd, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def make_project(path: Path, params: dict) -> Path:
    """A throw-away git + DVC repo holding the project's code and ``params``."""
    path.mkdir()
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, path / name)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q", "-b", "main"], path)
    _run(["git", "config", "user.email", "test@example.com"], path)
    _run(["git", "config", "user.name", "test"], path)
    _run([sys.executable, "-m", "dvc", "init", "-q"], path)
    _run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], path)
    _run(["git", "add", "-A"], path)
    _run(["git", "commit", "-q", "-m", "init"], path)
    return path


def dvc(project: Path, *args, check=True) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], project, check=check)


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    return make_project(tmp_path / "project", tiny_params_dict())


def test_repro_then_nothing_to_do(tiny_project):
    dvc(tiny_project, "repro")
    for split in ("train", "validation", "test"):
        assert (tiny_project / "data" / "lines" / f"{split}.parquet").stat().st_size > 0
    assert (tiny_project / "data" / "lines" / "charset.json").exists()
    assert (tiny_project / "metrics" / "data.json").exists()
    assert (tiny_project / "reports" / "preview" / "augment.png").exists()
    # DVC keeps data and pictures out of git
    ignored = _run(
        ["git", "check-ignore", "data/lines", "reports/preview"], tiny_project
    ).stdout.split()
    assert ignored == ["data/lines", "reports/preview"]

    assert (tiny_project / "models" / "model.ckpt").stat().st_size > 0
    assert (tiny_project / "metrics" / "train.json").exists()
    assert (tiny_project / "dvclive" / "plots" / "metrics" / "val" / "cer.tsv").exists()
    # DVCLive must not have written a dvc.yaml of its own or touched ours
    assert not (tiny_project / "dvclive" / "dvc.yaml").exists()
    assert _run(["git", "diff", "--stat", "dvc.yaml"], tiny_project).stdout == ""

    again = dvc(tiny_project, "repro")
    assert "Data and pipelines are up to date" in again.stdout + again.stderr
    assert "Data and pipelines are up to date" in dvc(tiny_project, "status").stdout

    # --force re-runs everything from scratch (a finished run is not "resumed"), and CPU
    # training is deterministic: the same quality metrics come back
    before = {p.name: p.read_text() for p in (tiny_project / "metrics").glob("*.json")}
    dvc(tiny_project, "repro", "--force")
    after = {p.name: p.read_text() for p in (tiny_project / "metrics").glob("*.json")}
    for name in ("data.json", "train.json", "evaluate.json"):
        assert after[name] == before[name], name
    assert (tiny_project / "dvclive" / "plots" / "metrics" / "val" / "cer.tsv").exists()

    shown = dvc(tiny_project, "metrics", "show").stdout
    assert "train.lines" in shown and "12" in shown


def test_a_bad_param_fails_in_one_line(tiny_project):
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["data"]["height"] = "tall"
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages.pull", "--params", "params.yaml",
               "--out", "data/lines", "--metrics", "metrics/data.json"]  # fmt: skip
    result = _run(command, tiny_project, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "[pull] error: params.yaml: data.height: expected an integer, got 'tall'"
    )
