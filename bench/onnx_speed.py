"""Network lines/s, torch vs onnxruntime (CPU), on the same width-sorted batches of a split,
with the greedy texts compared. After `dvc repro`:

    python bench/onnx_speed.py models/model.ckpt data/lines/test.parquet
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.data import LineDataset, WidthBucketBatches, collate
from pipeline.export import export_onnx
from pipeline.greedy import greedy_decode
from pipeline.lit_module import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("lines", type=Path, help="a line parquet, e.g. data/lines/test.parquet")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    module = load_model(args.model)
    onnx_path = export_onnx(args.model, Path(tempfile.mkdtemp()) / "model.onnx")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    dataset = LineDataset(args.lines, module.charset, module.model.config.architecture.height)
    order = WidthBucketBatches(dataset.widths, args.batch_size, shuffle=False, seed=0)
    batches = [collate([dataset[i] for i in indices]) for indices in order]

    def run_torch(batch):
        with torch.no_grad():
            return module.model(batch.images, batch.widths)[0]

    def run_onnx(batch):
        feed = {"images": batch.images.numpy(), "widths": batch.widths.numpy()}
        return torch.from_numpy(session.run(None, feed)[0])

    results, texts = {}, {}
    for name, runner in (("torch", run_torch), ("onnxruntime", run_onnx)):
        runner(batches[0])  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs = [runner(batch) for batch in batches]
            best = min(best, time.perf_counter() - start)
        results[name] = round(len(dataset) / best, 1)
        texts[name] = [
            h.text
            for batch, log_probs in zip(batches, outputs, strict=True)
            for h in greedy_decode(
                log_probs, module.model.output_lengths(batch.widths), module.charset
            )
        ]
    same = np.mean([a == b for a, b in zip(texts["torch"], texts["onnxruntime"], strict=True)])
    report = {
        "lines": len(dataset),
        "threads": torch.get_num_threads(),
        "torch_lines_per_second": results["torch"],
        "onnxruntime_lines_per_second": results["onnxruntime"],
        "same_greedy_text_fraction": round(float(same), 4),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
