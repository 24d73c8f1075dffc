"""The GPU paths, checked on a CUDA machine: ``make gpu-check`` (or ``python bench/gpu_check.py``).

1. trains the embedded default for a few hundred steps in ``bf16-mixed`` (the ``auto``
   precision on a GPU) through the real stages, and checks it learned something; then the
   same steps in fp32, for comparison;
2. decodes the validation lines of that model from emissions computed on the GPU with the
   pipeline's decoders (flashlight's beam search runs on the CPU), and tries torchaudio's
   CUDA beam decoder on the same emissions in a child process: it is out of the pipeline
   while pytorch/audio#3754 aborts it on an H100, and this says whether it still does;
3. measures training lines/s of the ``reference`` preset at 128 px and of the CPU default:
   the bare step, with changing batch widths, and deterministic as the train stage runs it;
4. runs a 1-GPU DDP smoke (``strategy=ddp``) through the train stage.

Prints a table, writes ``--out`` (JSON), exits 1 if any check failed. Without a GPU it
stops at once with exit code 2, unless ``--smoke-on-cpu`` (tiny sizes, CPU, for the tests:
every step runs but the CUDA decoder's, which needs a GPU).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from _runs import ROOT, StageRunner, params_with  # bench/ is on the path of its scripts

sys.path.insert(0, str(ROOT))
from pipeline.data import LineDataset
from pipeline.decoding import BLANK_TOKEN
from pipeline.layout import LinesFolder
from pipeline.model import CRNN, ModelConfig
from pipeline.params import load_params, padded_width
from pipeline.recognizer import Recognizer

FULL = {"lines": 4000, "epochs": 4, "ddp_lines": 400, "speed_steps": 30}  # 1,000 steps
SMOKE = {"lines": 24, "epochs": 1, "ddp_lines": 12, "speed_steps": 2}


def check_training(work: Path, sizes: dict, device: str, precision: str = "auto") -> dict:
    overrides = {
        "synthetic.train_lines": sizes["lines"],
        "synthetic.validation_lines": max(8, sizes["lines"] // 16),
        "synthetic.test_lines": 8,
        "train.max_epochs": sizes["epochs"],
        "train.accelerator": device,
        "train.precision": precision,
    }
    run = StageRunner(work / f"train-{precision}", params_with(overrides))
    lines = work / "lines"
    if not (lines / "charset.json").exists():
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
        expected = "bf16-mixed" if precision == "auto" else precision
        result["ok"] = (
            speed["device"] == "cuda"
            and speed["precision"] == expected
            and trained["val"]["cer"] < 0.5  # 1,000 steps: 0.33 here (CPU) and on an H100
        )
    else:
        result["ok"] = trained["val"]["cer"] is not None
    return result


def check_decoders(model_path: Path, lines: Path, device: str, work: Path) -> dict:
    """The beam decoders (flashlight, on the CPU) on emissions computed on ``device``; then
    torchaudio's CUDA decoder on the same emissions, in a child process (it can abort the
    process: pytorch/audio#3754), to say whether the installed torchaudio is still affected."""
    recognizer = Recognizer.load(model_path, device=device)
    dataset = LineDataset(
        LinesFolder(lines).split("validation"), recognizer.charset, recognizer.height
    )
    texts: dict[str, list[str]] = {name: [] for name in recognizer.decoders}
    seconds = dict.fromkeys(recognizer.decoders, 0.0)
    truths, emissions = [], []
    for indices, log_probs, frames, _ in recognizer.emissions(
        lambda i: dataset[i]["image"], dataset.widths
    ):
        emissions.append((log_probs.float().cpu(), frames.cpu()))
        for name, decoder in recognizer.decoders.items():
            start = time.perf_counter()
            texts[name] += [h.text for h in decoder(log_probs, frames)]
            seconds[name] += time.perf_counter() - start
        truths += [dataset.texts[i] for i in indices]
    from torchmetrics.functional.text import char_error_rate

    result: dict = {"lines": len(truths), "emissions_on": device}
    for name in recognizer.decoders:
        result[f"{name}_cer"] = round(float(char_error_rate(texts[name], truths)), 4)
        result[f"{name}_lines_per_second"] = round(len(truths) / seconds[name], 1)
    # every line decoded; once the model reads (greedy < 0.5), beam no worse than greedy
    result["ok"] = all(len(t) == len(truths) for t in texts.values()) and (
        result["greedy_cer"] >= 0.5 or result["beam_cer"] <= result["greedy_cer"] + 0.02
    )
    if device != "cuda":
        return {**result, "cuda_decoder": "no GPU: not tried"}
    batches = work / "emissions.pt"
    torch.save({"emissions": emissions, "tokens": [BLANK_TOKEN, *recognizer.charset.characters],
                "beam": recognizer.decoders["beam"].beam_width}, batches)  # fmt: skip
    child = subprocess.run(
        [sys.executable, __file__, "--cuda-decoder-child", str(batches)],
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["(no message)"])[-1]
        result["cuda_decoder"] = f"failed, exit {child.returncode}: {last[:300]}"
        return result
    cuda_texts = json.loads(batches.with_suffix(".json").read_text())
    agree = sum(a == b for a, b in zip(cuda_texts, texts["beam"], strict=True)) / len(truths)
    result["cuda_decoder"] = {
        "cer": round(float(char_error_rate(cuda_texts, truths)), 4),
        "same_text_as_flashlight": round(agree, 4),
    }
    return result


def cuda_decoder_child(batches: Path) -> None:
    """Decodes the saved emissions with torchaudio's ``cuda_ctc_decoder``; writes the texts."""
    from torchaudio.models.decoder import cuda_ctc_decoder

    saved = torch.load(batches)
    tokens = saved["tokens"]
    decoder = cuda_ctc_decoder(tokens, nbest=1, beam_size=saved["beam"], blank_skip_threshold=1.0)
    texts = []
    for log_probs, frames in saved["emissions"]:  # (T, B, K), (B,)
        results = decoder(
            log_probs.cuda().transpose(0, 1).contiguous(), frames.cuda().to(torch.int32)
        )
        texts += ["".join(tokens[i] for i in nbest[0].tokens) for nbest in results]
    batches.with_suffix(".json").write_text(json.dumps(texts))


def training_speed(preset: str, device: str, steps: int) -> dict:
    """Training lines/s of the network's bare step, and of the same step with what the train
    stage adds on top, one at a time: ``deterministic`` as the stage sets it on a GPU
    (cuDNN's deterministic kernels, ``use_deterministic_algorithms(warn_only)``), and batch
    widths that change every step (0.5x to 1.5x, padded as ``pad_lines`` pads them), on
    widths not met before (the draws repeat some) and then all met before."""
    params = load_params(ROOT / "params.yaml")
    arch = params.model.presets[preset]
    batch, width, chars = (16, 1000, 40) if preset == "reference" else (16, 200, 28)
    model = CRNN(ModelConfig(arch, params.model.column_pool, True, params.model.input_norm, 80)).to(
        device
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    targets = torch.randint(1, 80, (batch, chars), device=device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    draw = random.Random(0)

    def step(step_width: int) -> None:
        images = torch.rand(batch, 1, arch.height, step_width, device=device)  # (B, 1, H, W)
        widths = torch.full((batch,), step_width, device=device)
        optimizer.zero_grad()
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            log_probs, _ = model(images, widths)  # (T, B, K)
        frames = model.output_lengths(widths)
        loss = torch.nn.functional.ctc_loss(
            log_probs.float(), targets, frames, torch.full((batch,), chars, device=device)
        )
        loss.backward()
        optimizer.step()

    def lines_per_second(widths: list[int], warm: bool = True) -> float:
        # Warm-up: cuDNN chooses and caches its kernels once per input shape, so a long run
        # meets each of its few dozen padded widths cold only once; warm=False times that.
        for step_width in sorted(set(widths)) * 2 if warm else widths[:1]:
            step(step_width)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for step_width in widths:
            step(step_width)
        if device == "cuda":
            torch.cuda.synchronize()
        return round(batch * len(widths) / (time.perf_counter() - start), 1)

    fixed = [width] * steps
    varying = [padded_width(draw.randint(width // 2, width * 3 // 2)) for _ in range(steps)]
    result = {
        "input": f"{arch.height}x{width}",
        "batch": batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "lines_per_second": lines_per_second(fixed),
        # the same widths first cold, then each one seen before
        "unseen_widths_lines_per_second": lines_per_second(varying, warm=False),
        "varying_widths_lines_per_second": lines_per_second(varying),
    }
    deterministic = torch.are_deterministic_algorithms_enabled()
    deterministic_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_deterministic = torch.backends.cudnn.deterministic
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the CTC backward's warning, once per step
            result["deterministic_lines_per_second"] = lines_per_second(fixed)
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=deterministic_warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
    return result | {"ok": True}


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
    parser.add_argument("--cuda-decoder-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cuda_decoder_child:
        cuda_decoder_child(args.cuda_decoder_child)
        return
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

    accelerator = "gpu" if device == "cuda" else "cpu"
    trained = attempt("bf16_training", check_training, work, sizes, accelerator)
    # the same steps in fp32: what bf16 autocast costs in accuracy, and buys in speed
    attempt("fp32_training", check_training, work, sizes, accelerator, "32-true")
    if trained.get("model"):
        attempt(
            "beam_decoders",
            check_decoders,
            Path(trained["model"]),
            Path(trained["lines"]),
            device,
            work,
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
