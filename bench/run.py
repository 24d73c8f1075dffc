"""The benchmarks, side by side in one run (~10 min on the 2-vCPU machine):

    python bench/run.py            # after `dvc repro` (needs models/model.ckpt, data/lines)

1. decoding: greedy and beam (torchaudio flashlight) against a pure-Python prefix beam
   search (bench/prefix_beam.py), widths 1/10/50, on the trained model's test log-probs;
2. training throughput: the CPU default against the reference design (128x1000 stretched,
   ResNet 3/4/6/3, 4x BiLSTM-256, 96 frames), alternately, with and without the OpenMP
   fix, and achieved GFLOP/s against a matrix-multiply peak measured in the same process;
3. data: parquet -> augmented, padded batches, against what the model consumes;
4. pipeline: a no-op `dvc repro`.

Prints a table and writes bench/results/*.json. Figures are measurements of one run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from prefix_beam import prefix_beam_search  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchmetrics.text import CharErrorRate  # noqa: E402

from pipeline.charset import Charset  # noqa: E402
from pipeline.data import LineDataset, WidthBucketBatches, collate  # noqa: E402
from pipeline.decoding import BeamDecoder, GreedyDecoder  # noqa: E402
from pipeline.layout import LinesFolder  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.recognizer import Recognizer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PYTHON_LINES = 40  # the pure-Python search is slow: it reads this many test lines


def test_log_probs():
    """(log_probs (T, B, K), lengths, truths) of the test split from the trained model."""
    recognizer = Recognizer.load(ROOT / "models" / "model.ckpt", device="cpu")
    test = LinesFolder(ROOT / "data" / "lines").split("test")
    dataset = LineDataset(test, recognizer.charset, recognizer.height)
    items = []
    for indices, log_probs, frames, _ in recognizer.emissions(
        lambda i: dataset[i]["image"], dataset.widths
    ):
        for b, index in enumerate(indices):
            items.append((log_probs[: frames[b], b], int(frames[b]), dataset.texts[index]))
    return recognizer.charset, items


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def bench_decoding(charset: Charset, items, beam_size_token: int, beam_threshold: float) -> dict:
    def batched(decoder, subset):
        texts = []
        for start in range(0, len(subset), 32):
            chunk = subset[start : start + 32]
            length = max(n for _, n, _ in chunk)
            log_probs = torch.full((length, len(chunk), charset.num_classes), -1e4)
            log_probs[:, :, 0] = 0.0
            for b, (lp, n, _) in enumerate(chunk):
                log_probs[:n, b] = lp
            texts += [h.text for h in decoder(log_probs, torch.tensor([n for _, n, _ in chunk]))]
        return texts

    def cer(texts, subset):
        return round(float(CharErrorRate()(texts, [t for _, _, t in subset])), 5)

    subset = items[:PYTHON_LINES]
    rows = []
    greedy, seconds = timed(batched, GreedyDecoder(charset), items)
    rows.append(
        {
            "decoder": "greedy (torch)",
            "width": 1,
            "lines": len(items),
            "lines_per_second": len(items) / seconds,
            "cer": cer(greedy, items),
        }
    )
    for width in (1, 10, 50):
        beam = BeamDecoder(charset, width, beam_size_token, beam_threshold)
        texts, seconds = timed(batched, beam, items)
        rows.append(
            {
                "decoder": "beam (flashlight, tuned)",
                "width": width,
                "lines": len(items),
                "lines_per_second": len(items) / seconds,
                "cer": cer(texts, items),
            }
        )
        on_subset, seconds_subset = timed(batched, beam, subset)
        untuned = BeamDecoder(charset, width, 0, 1000.0)
        exhaustive, seconds_untuned = timed(batched, untuned, subset)
        python, seconds_python = timed(
            lambda w: [charset.decode(prefix_beam_search(lp.tolist(), w)) for lp, _, _ in subset],
            width,
        )
        rows.append(
            {
                "decoder": "beam (flashlight, no pruning)",
                "width": width,
                "lines": len(subset),
                "lines_per_second": len(subset) / seconds_untuned,
                "cer": cer(exhaustive, subset),
            }
        )
        rows.append(
            {
                "decoder": "prefix beam (pure Python)",
                "width": width,
                "lines": len(subset),
                "lines_per_second": len(subset) / seconds_python,
                "cer": cer(python, subset),
            }
        )
        rows[-1]["flashlight_tuned_on_same_lines_per_second"] = len(subset) / seconds_subset
        rows[-1]["speedup_tuned_vs_python"] = round(seconds_python / seconds_subset, 1)
        rows[-1]["cer_tuned_on_same_lines"] = cer(on_subset, subset)
        rows[-1]["same_text_as_flashlight_no_pruning"] = sum(
            a == b for a, b in zip(python, exhaustive, strict=True)
        )
    for row in rows:
        row["lines_per_second"] = round(row["lines_per_second"], 1)
    return {"rows": rows}


def _step_command(config: str, omp: str, steps: int) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "bench" / "train_step.py"),
        "--config",
        config,
        "--omp",
        omp,
        "--steps",
        str(steps),
    ]


def _step_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}


def run_step(config: str, omp: str, steps: int) -> dict:
    result = subprocess.run(
        _step_command(config, omp, steps),
        capture_output=True,
        text=True,
        env=_step_env(),
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_pair(omp: str, steps: int) -> float:
    """Two CPU-default trainings at once (as DDP on CPU, loader workers or a busy CI box):
    mean lines/s of each."""
    processes = [
        subprocess.Popen(
            _step_command("cpu", omp, steps), stdout=subprocess.PIPE, text=True, env=_step_env()
        )
        for _ in range(2)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in processes]
    return round(sum(r["lines_per_second"] for r in results) / 2, 2)


def bench_training() -> dict:
    runs = []
    for _ in range(2):  # alternate, so drifts of a shared machine hit both
        runs.append(run_step("cpu", "passive", 20))
        runs.append(run_step("reference", "passive", 2))
    runs.append(run_step("cpu", "default", 20))
    runs.append(run_step("reference", "default", 2))

    def mean(config, omp, key):
        values = [r[key] for r in runs if r["config"] == config and r["omp"] == omp]
        return sum(values) / len(values)

    summary = {
        "cpu_lines_per_second": round(mean("cpu", "passive", "lines_per_second"), 2),
        "reference_lines_per_second": round(mean("reference", "passive", "lines_per_second"), 2),
        "cpu_lines_per_second_default_omp": round(mean("cpu", "default", "lines_per_second"), 2),
        "reference_lines_per_second_default_omp": round(
            mean("reference", "default", "lines_per_second"), 2
        ),
    }
    summary["cpu_vs_reference"] = round(
        summary["cpu_lines_per_second"] / summary["reference_lines_per_second"], 1
    )
    summary["omp_fix_speedup_cpu"] = round(
        summary["cpu_lines_per_second"] / summary["cpu_lines_per_second_default_omp"], 2
    )
    summary["two_processes_lines_per_second_each_passive"] = run_pair("passive", 15)
    summary["two_processes_lines_per_second_each_default_omp"] = run_pair("default", 15)
    summary["omp_fix_speedup_two_processes"] = round(
        summary["two_processes_lines_per_second_each_passive"]
        / summary["two_processes_lines_per_second_each_default_omp"],
        2,
    )
    summary["omp_fix_speedup_reference"] = round(
        summary["reference_lines_per_second"] / summary["reference_lines_per_second_default_omp"], 2
    )
    return {"runs": runs, "summary": summary}


def bench_data(model_lines_per_second: float) -> dict:
    params = load_params(ROOT / "params.yaml")
    from pipeline.augment import build_augmentation

    lines = LinesFolder(ROOT / "data" / "lines")
    charset = Charset.load(lines.charset)
    dataset = LineDataset(
        lines.split("train"),
        charset,
        params.model.architecture.height,
        build_augmentation(params.augment),
    )
    batches = WidthBucketBatches(dataset.widths, params.train.batch_size, shuffle=True, seed=0)
    start, lines = time.perf_counter(), 0
    for batch in DataLoader(dataset, batch_sampler=batches, collate_fn=collate):
        lines += len(batch.texts)
        if lines >= 1500:
            break
    loader = lines / (time.perf_counter() - start)
    return {
        "loader_lines_per_second": round(loader, 1),
        "model_train_lines_per_second": model_lines_per_second,
        "loader_share_of_step_time": round(model_lines_per_second / loader, 3),
    }


def bench_pipeline() -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    noop = time.perf_counter() - start
    assert "up to date" in result.stdout, result.stdout
    speed = json.loads((ROOT / "metrics" / "train_speed.json").read_text())
    return {"noop_repro_seconds": round(noop, 2), "last_train_fit_seconds": speed["fit_seconds"]}


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    params = load_params(ROOT / "params.yaml")
    charset, items = test_log_probs()
    decoding = bench_decoding(
        charset, items, params.evaluate.beam_size_token, params.evaluate.beam_threshold
    )
    training = bench_training()
    data = bench_data(training["summary"]["cpu_lines_per_second"])
    pipeline = bench_pipeline()
    for name, result in {
        "decoding": decoding,
        "training": training,
        "data": data,
        "pipeline": pipeline,
    }.items():
        (RESULTS / f"{name}.json").write_text(
            json.dumps({"machine": machine, **result}, indent=1) + "\n"
        )

    print(f"machine: {machine}")
    print("\n| decoder | width | lines | lines/s | CER |\n|---|---|---|---|---|")
    for row in decoding["rows"]:
        print(
            f"| {row['decoder']} | {row['width']} | {row['lines']} | {row['lines_per_second']} | {row['cer']} |"
        )
    for row in decoding["rows"]:
        if "speedup_tuned_vs_python" in row:
            print(
                f"width {row['width']}: tuned flashlight is {row['speedup_tuned_vs_python']}x the pure-Python search "
                f"(CER {row['cer_tuned_on_same_lines']} vs {row['cer']} on the same {row['lines']} lines; "
                f"{row['same_text_as_flashlight_no_pruning']}/{row['lines']} texts equal to unpruned flashlight)"
            )
    print(
        "\n| training | lines/s | GFLOP/step | GFLOP/s | matmul peak GFLOP/s | peak MB |\n|---|---|---|---|---|---|"
    )
    for run in training["runs"]:
        print(
            f"| {run['config']} ({run['omp']} OMP, {run['input'][0]}x{run['input'][1]}, batch {run['batch']}) | {run['lines_per_second']} | "
            f"{run['gflop_per_step']} | {run['achieved_gflops']} | {run['matmul_peak_gflops']} | {run['peak_memory_mb']} |"
        )
    print(f"\ntraining summary: {training['summary']}")
    print(f"data: {data}")
    print(f"pipeline: {pipeline}")


if __name__ == "__main__":
    main()
