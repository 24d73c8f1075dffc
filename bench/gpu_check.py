"""The GPU paths, checked on a CUDA machine: ``make gpu-check`` (or ``python bench/gpu_check.py``).

1. trains the embedded default for a few hundred steps in ``bf16-mixed`` (the ``auto``
   precision on a GPU) through the real stages, and checks it learned something;
2. decodes the validation lines of that model with the CUDA beam decoder and with
   flashlight's on the same log-probs, and states how often their texts agree;
3. measures training lines/s of the ``reference`` preset at 128 px and of the CPU default;
4. runs a 1-GPU DDP smoke (``strategy=ddp``) through the train stage.

Prints a table, writes ``--out`` (JSON), exits 1 if any check failed. Without a GPU it
stops at once with exit code 2, unless ``--smoke-on-cpu`` (tiny sizes, CPU, for the tests:
every step runs but the CUDA decoder comparison, which needs a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from _runs import ROOT, StageRunner, params_with  # bench/ is on the path of its scripts

sys.path.insert(0, str(ROOT))
from pipeline.data import LineDataset
from pipeline.layout import LinesFolder
from pipeline.model import CRNN, ModelConfig
from pipeline.params import load_params
from pipeline.recognizer import Recognizer

FULL = {"lines": 4000, "epochs": 2, "ddp_lines": 400, "speed_steps": 30}  # 500 steps
SMOKE = {"lines": 24, "epochs": 1, "ddp_lines": 12, "speed_steps": 2}


def check_training(work: Path, sizes: dict, device: str) -> dict:
    overrides = {
        "synthetic.train_lines": sizes["lines"],
        "synthetic.validation_lines": max(8, sizes["lines"] // 16),
        "synthetic.test_lines": 8,
        "train.max_epochs": sizes["epochs"],
        "train.accelerator": device,
    }
    run = StageRunner(work / "bf16", params_with(overrides))
    lines = work / "lines"
    run.pull(lines)
    model = run.train(lines)
    speed = json.loads((run.folder / "train_speed.json").read_text())
    trained = json.loads((run.folder / "train.json").read_text())
    result = {
        "device": speed["device"],
        "precision": speed["precision"],
        "steps": trained["steps"],
        "val_cer": trained["val"]["cer"],
        "train_lines_per_second": speed["train_lines_per_second"],
        "model": str(model),
        "lines": str(lines),
    }
    if device == "gpu":
        result["ok"] = (
            speed["device"] == "cuda"
            and speed["precision"] == "bf16-mixed"
            and trained["val"]["cer"] < 0.5  # the CPU default is at ~0.3 after 500 steps
        )
    else:
        result["ok"] = trained["val"]["cer"] is not None
    return result


def check_decoders(model_path: Path, lines: Path, device: str) -> dict:
    recognizer = Recognizer.load(model_path, device=device)
    beam = recognizer.decoders["beam"]
    dataset = LineDataset(
        LinesFolder(lines).split("validation"), recognizer.charset, recognizer.height
    )
    on_device, on_cpu, truths = [], [], []
    seconds = {"cuda": 0.0, "cpu": 0.0}
    for indices, log_probs, frames, _ in recognizer.emissions(
        lambda i: dataset[i]["image"], dataset.widths
    ):
        start = time.perf_counter()
        if device == "cuda":
            on_device += [h.text for h in beam(log_probs, frames)]
            torch.cuda.synchronize()
        seconds["cuda"] += time.perf_counter() - start
        start = time.perf_counter()
        on_cpu += [h.text for h in beam(log_probs.cpu(), frames.cpu())]
        seconds["cpu"] += time.perf_counter() - start
        truths += [dataset.texts[i] for i in indices]
    from torchmetrics.functional.text import char_error_rate

    result = {
        "lines": len(truths),
        "flashlight_cer": round(float(char_error_rate(on_cpu, truths)), 4),
        "flashlight_lines_per_second": round(len(truths) / seconds["cpu"], 1),
    }
    if device != "cuda":
        return {**result, "ok": True, "note": "no GPU: the CUDA decoder was not compared"}
    agree = sum(a == b for a, b in zip(on_device, on_cpu, strict=True)) / len(truths)
    cuda_cer = float(char_error_rate(on_device, truths))
    return {
        **result,
        "cuda_cer": round(cuda_cer, 4),
        "cuda_lines_per_second": round(len(truths) / seconds["cuda"], 1),
        "same_text_fraction": round(agree, 4),
        # the searches differ (CUDA: max over paths in the beam, blank frames handled apart),
        # so texts may differ on close calls; a broken decoder would differ wholesale
        "ok": abs(cuda_cer - result["flashlight_cer"]) <= 0.01,
    }


def training_speed(preset: str, device: str, steps: int) -> dict:
    params = load_params(ROOT / "params.yaml")
    arch = params.model.presets[preset]
    batch, width, chars = (16, 1000, 40) if preset == "reference" else (16, 200, 28)
    model = CRNN(ModelConfig(arch, params.model.column_pool, True, params.model.input_norm, 80)).to(
        device
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 1, arch.height, width, device=device)
    widths = torch.full((batch,), width, device=device)
    targets = torch.randint(1, 80, (batch, chars), device=device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def step() -> None:
        optimizer.zero_grad()
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            log_probs, _ = model(images, widths)
        frames = model.output_lengths(widths)
        loss = torch.nn.functional.ctc_loss(
            log_probs.float(), targets, frames, torch.full((batch,), chars, device=device)
        )
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {
        "input": f"{arch.height}x{width}",
        "batch": batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "lines_per_second": round(batch / seconds, 1),
        "ok": True,
    }


def check_ddp(work: Path, sizes: dict, device: str) -> dict:
    overrides = {
        "synthetic.train_lines": sizes["ddp_lines"],
        "synthetic.validation_lines": 8,
        "synthetic.test_lines": 8,
        "train.max_epochs": 1,
        "train.accelerator": device,
        "train.devices": "1",
        "train.strategy": "ddp",
    }
    run = StageRunner(work / "ddp", params_with(overrides))
    run.pull(work / "ddp-lines")
    run.train(work / "ddp-lines")
    trained = json.loads((run.folder / "train.json").read_text())
    return {"steps": trained["steps"], "ok": trained["steps"] > 0}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch folder (default: a temp one)"
    )
    parser.add_argument("--smoke-on-cpu", action="store_true", help="tiny sizes on CPU (tests)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke_on_cpu:
        print("gpu-check: no CUDA device here; run it on a GPU machine", file=sys.stderr)
        sys.exit(2)
    device = "cpu" if args.smoke_on_cpu else "cuda"
    sizes = SMOKE if args.smoke_on_cpu else FULL
    work = args.work or Path(tempfile.mkdtemp(prefix="htr-gpu-check-"))
    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}

    def attempt(name: str, function, *function_args) -> dict:
        print(f"gpu-check: {name} ...", flush=True)
        try:
            report[name] = function(*function_args)
        except Exception as error:  # a failed check is reported; the others still run
            traceback.print_exc()
            report[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        return report[name]

    trained = attempt(
        "bf16_training", check_training, work, sizes, "gpu" if device == "cuda" else "cpu"
    )
    if trained.get("model"):
        attempt(
            "beam_decoders", check_decoders, Path(trained["model"]), Path(trained["lines"]), device
        )
    for preset in ("reference", "cpu"):
        attempt(f"speed_{preset}", training_speed, preset, device, sizes["speed_steps"])
    attempt("ddp_one_gpu", check_ddp, work, sizes, "gpu" if device == "cuda" else "cpu")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    failed = [name for name, value in report.items() if isinstance(value, dict) and not value["ok"]]
    for name, value in report.items():
        print(f"| {name} | {json.dumps(value) if isinstance(value, dict) else value} |")
    print(f"gpu-check: {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
