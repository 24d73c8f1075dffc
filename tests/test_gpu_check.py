"""bench/gpu_check.py: refuses clearly without a GPU; every step runs in its CPU smoke mode."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

SCRIPT = [sys.executable, str(ROOT / "bench" / "gpu_check.py")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    done = subprocess.run(
        [*SCRIPT, "--out", str(tmp_path / "r.json")], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "no CUDA device here" in done.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_the_cpu_smoke_runs_every_check(tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run(
        [*SCRIPT, "--smoke-on-cpu", "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) == {
        "device", "bf16_training", "fp32_training", "beam_decoders", "speed_reference",
        "speed_cpu", "ddp_one_gpu",
    }  # fmt: skip
    assert report["bf16_training"]["precision"] == "32-true"  # CPU: auto -> fp32
    assert report["beam_decoders"]["lines"] > 0
    assert report["speed_reference"]["input"] == "128x1000"
    # the bare step, then what training adds
    for kind in ("", "unseen_widths_", "varying_widths_", "deterministic_"):
        assert report["speed_cpu"][f"{kind}lines_per_second"] > 0
    assert report["ddp_one_gpu"]["steps"] > 0
