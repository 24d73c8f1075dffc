"""pipeline.verify: exact where the stack is exact, a tolerance on rates, speed ignored."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.verify import (
    ABSOLUTE_TOLERANCE,
    RELATIVE_TOLERANCE,
    VerifyError,
    compare_file,
    read_metrics,
    verify,
)
from tests.conftest import ROOT

TRAIN = {"val": {"cer": 0.1, "wer_last": 0.4}, "epochs": 8, "steps": 2000}


def _write(folder: Path, **files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / f"{name}.json").write_text(json.dumps(data))
    return folder


def _failed(checks) -> list[str]:
    return [f"{c.file}:{c.key}" for c in checks if not c.ok]


def test_rates_pass_within_the_relative_tolerance_and_fail_beyond_it():
    inside = {"val": {"cer": 0.109, "wer_last": 0.37}, "epochs": 8, "steps": 2000}
    outside = {"val": {"cer": 0.111, "wer_last": 0.4}, "epochs": 8, "steps": 2000}
    assert _failed(compare_file("train.json", TRAIN, inside, False, 0.1, 0.0)) == []
    assert _failed(compare_file("train.json", TRAIN, outside, False, 0.1, 0.0)) == [
        "train.json:val.cer"
    ]


def test_a_better_result_fails_too_the_committed_metrics_would_be_stale():
    better = {"val": {"cer": 0.05, "wer_last": 0.4}, "epochs": 8, "steps": 2000}
    assert _failed(compare_file("train.json", TRAIN, better, False, 0.1, 0.0)) == [
        "train.json:val.cer"
    ]


def test_small_rates_get_the_absolute_floor():
    assert _failed(compare_file("t", {"cer": 0.001}, {"cer": 0.0029}, False, 0.1, 0.002)) == []
    assert _failed(compare_file("t", {"cer": 0.001}, {"cer": 0.0031}, False, 0.1, 0.002)) == [
        "t:cer"
    ]


def _default_rule(expected: dict, actual: dict):
    return compare_file("e", expected, actual, False, RELATIVE_TOLERANCE, ABSOLUTE_TOLERANCE)


def test_the_default_tolerance_takes_a_measured_host_and_refuses_a_halved_schedule():
    """Known answers (README): the committed run (an Intel host) against a fresh clone's on
    an AMD EPYC host; an earlier default against the same run with its schedule halved."""
    committed = {"validation": {"greedy": {"cer": 0.097108}, "beam_lm": {"cer": 0.042862}}}
    other_host = {"validation": {"greedy": {"cer": 0.103148}, "beam_lm": {"cer": 0.047508}}}
    assert _failed(compare_file("e", committed, other_host, False, 0.1, 0.002)) == [
        "e:validation.beam_lm.cer"  # the old floor: 0.0046 > 10 % of 0.0429
    ]
    assert _failed(_default_rule(committed, other_host)) == []
    earlier = {"validation": {"cer": 0.0283}, "test": {"beam": {"cer": 0.1646}}}
    halved = {"validation": {"cer": 0.0863}, "test": {"beam": {"cer": 0.2411}}}
    assert _failed(_default_rule(earlier, halved)) == ["e:test.beam.cer", "e:validation.cer"]


def test_counts_and_missing_keys_must_match_exactly():
    other = {"val": {"cer": 0.1}, "epochs": 7, "steps": 2000, "extra": 1}
    assert _failed(compare_file("train.json", TRAIN, other, False, 0.5, 0.5)) == [
        "train.json:epochs",
        "train.json:extra",
        "train.json:val.wer_last",
    ]


def test_exact_files_allow_no_float_difference():
    assert _failed(compare_file("data.json", {"w": 200.0}, {"w": 200.0001}, True, 0.1, 0.1)) == [
        "data.json:w"
    ]


def test_verify_folders_reads_only_the_quality_files(tmp_path):
    data = {"train": {"lines": 10, "width_px": {"mean": 200.5}}}
    evaluation = {"test": {"beam": {"cer": 0.2, "wer": 0.5}, "lines": 30}}
    expected = _write(tmp_path / "a", data=data, train=TRAIN, evaluate=evaluation)
    noisy = {"test": {"beam": {"cer": 0.21, "wer": 0.52}, "lines": 30}}
    actual = _write(tmp_path / "b", data=data, train=TRAIN, evaluate=noisy)
    (actual / "train_speed.json").write_text('{"lines_per_second": 1}')  # never compared
    assert _failed(verify(str(expected), str(actual))) == []
    regressed = {"test": {"beam": {"cer": 0.3, "wer": 0.52}, "lines": 30}}
    _write(actual, evaluate=regressed)
    assert _failed(verify(str(expected), str(actual))) == ["evaluate.json:test.beam.cer"]


def test_a_missing_file_is_a_clear_error(tmp_path):
    _write(tmp_path / "a", train=TRAIN)
    with pytest.raises(VerifyError, match=r"data\.json: missing"):
        verify(str(tmp_path / "a"), str(tmp_path / "a"))


def _git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    done = subprocess.run(
        ["git", *identity, *args], cwd=repo, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_metrics_are_read_from_revisions_and_dvc_experiment_refs(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _write(repo / "metrics", train=TRAIN)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "base")
    head = _git(repo, "rev-parse", "HEAD")
    # dvc keeps an experiment as a commit under refs/exps/<base[:2]>/<base[2:]>/<name>
    _write(repo / "metrics", train={**TRAIN, "epochs": 2})
    _git(repo, "commit", "-qam", "experiment")
    _git(repo, "update-ref", f"refs/exps/{head[:2]}/{head[2:]}/ci-tiny", "HEAD")
    # the same name under another baseline (an older commit): HEAD's experiment wins
    _write(repo / "metrics", train={**TRAIN, "epochs": 5})
    _git(repo, "commit", "-qam", "experiment of an older baseline")
    _git(repo, "update-ref", "refs/exps/00/00000000000000000000000000000000000000/ci-tiny", "HEAD")
    _git(repo, "checkout", "-q", head)
    monkeypatch.chdir(repo)
    assert read_metrics("HEAD", "train.json")["epochs"] == 8
    assert read_metrics("ci-tiny", "train.json")["epochs"] == 2
    with pytest.raises(VerifyError, match="neither a git revision nor a dvc experiment"):
        read_metrics("no-such-run", "train.json")


def test_the_command_exits_1_on_a_regression_and_says_what(tmp_path):
    data = {"n": 1}
    evaluation = {"test": {"beam": {"cer": 0.2}}}
    expected = _write(tmp_path / "a", data=data, train=TRAIN, evaluate=evaluation)
    actual = _write(
        tmp_path / "b", data=data, train=TRAIN, evaluate={"test": {"beam": {"cer": 0.4}}}
    )
    command = [sys.executable, "-m", "pipeline.verify", "--expected", str(expected)]
    done = subprocess.run(
        [*command, "--actual", str(actual)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "| evaluate.json | test.beam.cer | 0.2 | 0.4 | ±0.0200 | **FAIL** |" in done.stdout
    same = subprocess.run(
        [*command, "--actual", str(expected)], cwd=ROOT, capture_output=True, text=True
    )
    assert same.returncode == 0, same.stdout
