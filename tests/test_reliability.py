"""Bad inputs, interruptions and reruns: clear errors, nothing lost, same results."""

import io
import json
import os
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.charset import Charset
from pipeline.data import Batch
from pipeline.evaluation import EvaluationOutputs, evaluate
from pipeline.layout import LinesFolder
from pipeline.lines import read_split
from pipeline.lit_module import CRNNModule, ModelFileError, load_model
from pipeline.model import ModelConfig
from pipeline.params import ParamsError, parse_params
from pipeline.predict import predict
from pipeline.pull import pull
from pipeline.recognizer import Recognizer
from pipeline.training import TrainOutputs, train
from tests.conftest import (
    ROOT,
    TAKES_CTRL_C,
    jpeg_bytes,
    png_bytes,
    project_params_dict,
    tiny_params_dict,
    write_hub_layout,
)
from tests.test_repro import dvc, make_project


def _encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _line(width: int, height: int) -> Image.Image:
    image = Image.new("L", (width, height), 235)
    for x in range(5, width - 5, 9):  # "ink" strokes
        image.paste(30, (x, height // 4, x + 3, 3 * height // 4))
    return image


# (name, image bytes, text, expected outcome): "kept", "kept:<text as stored>" or
# "dropped:<reason>"
BAD_CORPUS = [
    ("corrupt bytes", b"\x00\x01 definitely not an image", "corrupt", "dropped:undecodable_image"),
    ("truncated png", _encoded(_line(300, 40))[:-60], "truncated", "dropped:undecodable_image"),
    ("zero-byte image", b"", "zero bytes", "dropped:empty_image"),
    ("missing image", None, "no image", "dropped:empty_image"),
    ("1 px high", png_bytes(400, 1), "one pixel", "dropped:image_too_small"),
    ("empty text", png_bytes(100, 40), "", "dropped:empty_text"),
    ("whitespace text", png_bytes(100, 40), " \t\n ", "dropped:empty_text"),
    ("missing text", png_bytes(100, 40), None, "dropped:missing_text"),
    ("60,000 px wide", _encoded(_line(60_000, 40)), "a very wide line", "dropped:too_wide"),
    ("ruler line", _encoded(_line(30_000, 12)), "ruler", "dropped:too_wide"),  # 2,500:1
    ("widest legal line", _encoded(_line(59 * 40, 40)), "a wide line", "kept"),  # 59:1
    ("6 px wide", png_bytes(6, 40), "narrow", "dropped:image_too_small"),
    ("zero-width space text", png_bytes(100, 40), "\u200b", "dropped:empty_text"),
    (
        "control characters",
        png_bytes(100, 40),
        "red\x1b[31m alert\x07 \u200bnow\u200e",
        "kept:red alert now",
    ),
    ("RGBA", _encoded(Image.new("RGBA", (120, 40), (0, 0, 0, 0))), "rgba", "kept"),
    (
        "16-bit",
        _encoded(Image.fromarray(np.full((40, 120), 50_000, dtype=np.uint16))),
        "sixteen",
        "kept",
    ),
    ("palette", _encoded(_line(120, 40).convert("P")), "palette", "kept"),
    ("CMYK JPEG", _encoded(_line(120, 40).convert("CMYK"), "JPEG"), "cmyk", "kept"),
    ("non-NFC text", png_bytes(100, 40), "cafe\u0301", "kept"),
    ("unseen characters", png_bytes(100, 40), "naïve ☃", "kept"),  # in the test split only
]
UNSEEN = "unseen characters"


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    good = [(jpeg_bytes(100 + 7 * i, 40), f"good line {i}") for i in range(16)]
    corpus = [(image, text) for _, image, text, _ in BAD_CORPUS]
    seen = [(image, text) for name, image, text, _ in BAD_CORPUS if name != UNSEEN]
    splits = {"train": good + seen, "validation": good[:4], "test": good[:4] + corpus}
    hub = write_hub_layout(root / "hub", splits)
    mapping = tiny_params_dict()
    mapping["data"].update(source="hub", hub_id=str(hub), max_bad_fraction=0.5)
    params = parse_params(mapping)
    metrics = pull(params, root / "lines", root / "data.json")
    return params, root, metrics


def test_every_bad_input_has_its_expected_outcome(bad_corpus):
    _, root, metrics = bad_corpus
    expected_drops: dict[str, int] = {}
    for _, _, _, outcome in BAD_CORPUS:
        if outcome.startswith("dropped:"):
            reason = outcome.split(":")[1]
            expected_drops[reason] = expected_drops.get(reason, 0) + 1
    for split in ("train", "test"):
        kept = [
            outcome.removeprefix("kept:") if outcome.startswith("kept:") else text
            for name, _, text, outcome in BAD_CORPUS
            if outcome.startswith("kept") and (split == "test" or name != UNSEEN)
        ]
        dropped = {reason: n for reason, n in metrics[split]["dropped_by_reason"].items() if n}
        assert dropped == expected_drops  # zero silent losses: every drop is counted
        texts = read_split(root / "lines" / f"{split}.parquet").column("text").to_pylist()
        assert len(texts) == len(kept) + (16 if split == "train" else 4)
        # kept rows are normalized: NFC text, grayscale PNG at the stored height
        assert [t for t in texts if not t.startswith("good")] == [
            "café" if t == "cafe\u0301" else t for t in kept
        ]
    rows = read_split(root / "lines" / "train.parquet").to_pylist()
    wide = next(row for row in rows if row["text"] == "a wide line")
    assert wide["height"] == 32 and wide["width"] == 59 * 32
    assert (
        metrics["train"]["texts_cleaned"] == 1 and metrics["train"]["chars_removed"] == 8
    )  # ESC[31m, BEL, ZWSP, LRM
    charset = "".join(Charset.load(root / "lines" / "charset.json").characters)
    assert not [ch for ch in charset if unicodedata.category(ch) in ("Cc", "Cf")], charset
    for row in rows:
        image = Image.open(io.BytesIO(row["image"]))
        assert image.mode == "L" and image.height == 32


def test_bad_corpus_trains_evaluates_and_predicts(bad_corpus, tmp_path):
    params, root, _ = bad_corpus
    outputs = TrainOutputs(
        tmp_path / "model.ckpt",
        tmp_path / "checkpoints",
        tmp_path / "dvclive",
        tmp_path / "train.json",
        tmp_path / "train_speed.json",
    )
    train(params, LinesFolder(root / "lines"), outputs)
    reports = [tmp_path / name for name in ("evaluate.json", "speed.json", "predictions.parquet")]
    recognizer = Recognizer.load(tmp_path / "model.ckpt", device="cpu", params=params)
    metrics = evaluate(
        recognizer,
        LinesFolder(root / "lines"),
        EvaluationOutputs(*reports, tmp_path / "plots", tmp_path / "worst.png"),
        params.evaluate.worst_lines,
    )
    # "naïve ☃": characters the training split never had are counted, not a KeyError
    assert metrics["test"]["unknown_chars"] >= 2

    files = tmp_path / "inputs"
    files.mkdir()
    for i, (_, image, _, _) in enumerate(BAD_CORPUS):
        (files / f"{i:02d}.png").write_bytes(image or b"")
    predictions = predict(tmp_path / "model.ckpt", [files], "greedy", ROOT / "params.yaml")
    by_file = {Path(p.name).name: p for p in predictions}
    for i, (name, _, _, outcome) in enumerate(BAD_CORPUS):
        prediction = by_file[f"{i:02d}.png"]
        image_is_bad = outcome.split(":")[-1] in {
            "undecodable_image",
            "empty_image",
            "image_too_small",
            "too_wide",
        }
        assert (prediction.error is not None) == image_is_bad, name
        if image_is_bad:
            assert prediction.error.split(":")[0] == outcome.split(":")[1], name


def test_ctc_edge_cases_are_counted_not_hidden(tiny_params):
    config = ModelConfig(tiny_params.model.architecture, "max", False, "none", num_classes=4)
    module = CRNNModule(config.to_dict(), "abc", 0.0, 1.0e-3, 0.0, 0.1)
    log_probs = torch.randn(6, 3, 4).log_softmax(-1)  # (T, B, K)
    batch = Batch(
        images=torch.zeros(3, 1, 32, 12), widths=torch.tensor([12, 12, 12]),
        targets=torch.tensor([1, 2, 3, 1, 2, 3, 1, 2, 3]),  # "" | "abc" | "abcabc" (too long)
        target_lengths=torch.tensor([0, 3, 6]), texts=["", "abc", "abcabc"], ids=["0", "1", "2"],
        writers=[None] * 3,
    )  # fmt: skip
    frames = torch.tensor([6, 6, 4])  # the third line's 6 characters cannot fit 4 frames
    loss, nonfinite = module._ctc(log_probs, batch, frames)
    assert torch.isfinite(loss) and nonfinite.item() == 1
    first_two = Batch(
        batch.images[:2], batch.widths[:2], batch.targets[:3], batch.target_lengths[:2],
        batch.texts[:2], batch.ids[:2], batch.writers[:2],
    )  # fmt: skip
    single = module._ctc(log_probs[:, :2], first_two, frames[:2])[0]
    assert torch.allclose(loss, single)  # the infeasible line adds nothing
    poisoned = log_probs.clone()
    poisoned[:, 1] = float("nan")
    loss, nonfinite = module._ctc(poisoned, batch, frames)
    assert torch.isfinite(loss) and nonfinite.item() == 2


def test_tampered_and_truncated_checkpoints_are_refused(tmp_path, tiny_params):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    tampered = tmp_path / "tampered.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Exploit()}, tampered)
    with pytest.raises(ModelFileError, match="not a loadable checkpoint"):
        load_model(tampered)
    assert not marker.exists()  # weights_only=True: the pickled code never ran

    config = ModelConfig(tiny_params.model.architecture, "max", True, "none", num_classes=4)
    module = CRNNModule(config.to_dict(), "abc", 0.1, 1.0e-3, 0.0, 0.1)
    from pipeline.lit_module import save_model

    good = tmp_path / "good.ckpt"
    save_model(module, good)
    assert load_model(good).charset.characters == ("a", "b", "c")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError, match=r"truncated\.ckpt: not a loadable checkpoint"):
        load_model(truncated)
    with pytest.raises(ModelFileError, match="no such checkpoint"):
        load_model(tmp_path / "missing.ckpt")


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "batch_size", -8, "train.batch_size: must be >= 1, got -8"),
        ("evaluate", "beam_width", 0, "evaluate.beam_width: must be >= 1, got 0"),
        ("train", "learning_rate", "1e-3", "train.learning_rate: expected a number"),
        ("train", "lerning_rate", 1.0e-3, "train.lerning_rate: unknown key"),
    ],
)
def test_bad_params_fail_in_one_line_before_any_work(tmp_path, section, key, value, message):
    mapping = tiny_params_dict()
    mapping[section][key] = value
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(mapping))
    o = tmp_path / "o"
    commands = {
        "pull": ["--out", str(o), "--metrics", str(o / "data.json")],
        "train": ["--lines", str(tmp_path), "--model", str(o / "model.ckpt"),
                  "--checkpoints", str(o / "checkpoints"), "--live", str(o / "live"),
                  "--metrics", str(o / "train.json"), "--speed", str(o / "speed.json")],
    }  # fmt: skip
    for stage, paths in commands.items():
        command = [sys.executable, "-m", f"stages.{stage}", "--params", str(params_file), *paths]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()  # one line, no traceback
        assert line.startswith(f"[{stage}] error: {params_file}: {message}")
        assert not (tmp_path / "o").exists()


def test_a_height_the_encoder_cannot_reduce_is_a_params_error():
    mapping = tiny_params_dict()
    mapping["model"]["presets"]["cpu"]["height"] = 8
    with pytest.raises(ParamsError, match=r"height: 8 px cannot be reduced 16x"):
        parse_params(mapping)


def _pull_command(params_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "stages.pull", "--params", str(params_file), "--out", str(out),
            "--metrics", str(out.parent / "data.json")]  # fmt: skip


def _slow_pull_params(tmp_path: Path) -> Path:
    mapping = tiny_params_dict()
    mapping["synthetic"]["train_lines"] = 3000  # ~30 s of rendering: time to be interrupted
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(mapping))
    return params_file


def _wait_for_scratch(parent: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not list(parent.glob(".lines.partial-*")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the rendering


def test_sigkill_during_pull_leaves_no_partial_output_and_rerun_succeeds(tmp_path):
    params_file = _slow_pull_params(tmp_path)
    out = tmp_path / "data" / "lines"
    out.mkdir(parents=True)
    (out / "train.parquet").write_bytes(b"previous complete output")
    process = subprocess.Popen(
        _pull_command(params_file, out),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        **TAKES_CTRL_C,
    )
    _wait_for_scratch(out.parent, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / "train.parquet").read_bytes() == b"previous complete output"  # untouched
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet"]

    mapping = yaml.safe_load(params_file.read_text())
    mapping["synthetic"]["train_lines"] = 12
    params_file.write_text(yaml.safe_dump(mapping))
    subprocess.run(
        _pull_command(params_file, out), cwd=ROOT, check=True, capture_output=True, timeout=300
    )
    assert read_split(out / "train.parquet").num_rows == 12
    assert not list(out.parent.glob(".lines.partial-*"))  # the killed run's scratch is cleaned


def test_ctrl_c_during_pull_gives_a_clean_message(tmp_path):
    params_file = _slow_pull_params(tmp_path)
    out = tmp_path / "data" / "lines"
    process = subprocess.Popen(
        _pull_command(params_file, out),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        **TAKES_CTRL_C,
    )
    _wait_for_scratch(out.parent, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "[pull] interrupted: outputs were left as they were" in stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not list(out.parent.glob(".lines.partial-*"))


@pytest.mark.slow
def test_sigkill_during_dvc_repro_train_resumes_on_the_next_repro(tmp_path):
    mapping = tiny_params_dict()
    mapping["synthetic"]["train_lines"] = 120
    mapping["train"]["max_epochs"] = 6
    project = make_project(tmp_path / "project", mapping)
    dvc(project, "repro", "pull")
    last = project / "models" / "checkpoints" / "last.ckpt"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "train"], cwd=project, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # dvc and the stage it runs, like a pre-empted machine
    process.wait()

    result = dvc(project, "repro", "train")
    assert "resuming the interrupted run" in result.stdout + result.stderr
    metrics = json.loads((project / "metrics" / "train.json").read_text())
    speed = json.loads((project / "metrics" / "train_speed.json").read_text())
    assert metrics["epochs"] == 6 and speed["epochs_this_run"] < 6
    assert "Data and pipelines are up to date" in dvc(project, "status", "train").stdout


@pytest.mark.slow
def test_two_from_scratch_runs_give_identical_metrics(tmp_path):
    runs = []
    for name in ("first", "second"):
        project = make_project(tmp_path / name, tiny_params_dict())
        dvc(project, "repro")
        runs.append(
            {
                p.name: json.loads(p.read_text())
                for p in sorted((project / "metrics").glob("*.json"))
            }
        )
    quality = [{k: v for k, v in run.items() if not k.endswith("_speed.json")} for run in runs]
    assert set(quality[0]) == {"data.json", "train.json", "lm.json", "evaluate.json"}
    assert quality[0] == quality[1]  # exact: CPU training is deterministic


# The train stage on a batch of the widest legal lines needs 3-5 GB of address space here.
MEMORY_CEILING_GB = 6


@pytest.mark.slow
def test_training_on_the_widest_legal_lines_stays_under_a_memory_ceiling(tmp_path):
    """16 lines at the widest legal aspect ratio (one full batch) and a 2,500:1 ruler line:
    pull drops the ruler, the batch budget bounds every step, and the whole train stage
    runs in a process that may not allocate more than MEMORY_CEILING_GB. Without those
    limits the ruler line alone (80,000 px once resized) would need ~40 GB in a batch."""
    widest = [(_encoded(_line(59 * 40, 40)), f"wide line {i}") for i in range(16)]
    ruler = [(_encoded(_line(30_000, 12)), "ruler")]
    normal = [(jpeg_bytes(300, 40), f"short {i}") for i in range(4)]
    hub = write_hub_layout(
        tmp_path / "hub",
        {"train": widest + ruler + normal, "validation": normal, "test": normal},
    )
    mapping = project_params_dict()
    mapping["data"].update(source="hub", hub_id=str(hub), max_bad_fraction=0.1)
    # one process, under the ceiling, and the 16 widest lines one batch at the budget
    mapping["train"].update(max_epochs=1, early_stopping_patience=0, batch_size=16, cpu_processes=1)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(mapping))
    metrics = pull(parse_params(mapping), tmp_path / "lines", tmp_path / "data.json")
    assert metrics["train"]["dropped_by_reason"]["too_wide"] == 1

    ceiling = MEMORY_CEILING_GB * 2**30
    script = (
        "import resource, sys, runpy; "
        f"resource.setrlimit(resource.RLIMIT_DATA, ({ceiling}, {ceiling})); "
        "sys.argv = ['train'] + sys.argv[1:]; runpy.run_module('stages.train', run_name='__main__')"
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", script, "--params", str(params_file),
         "--lines", str(tmp_path / "lines"), "--model", str(out / "model.ckpt"),
         "--checkpoints", str(out / "checkpoints"), "--live", str(out / "dvclive"),
         "--metrics", str(out / "train.json"), "--speed", str(out / "speed.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "train.json").read_text())["steps"] == 2  # 16 wide + 4 short
