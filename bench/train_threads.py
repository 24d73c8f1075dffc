"""Training lines/s of the real loop — the project's LineDataModule (augmentation included)
and its DataLoader, the network's forward and backward, AdamW — for combinations of
compute threads (``train.cpu_threads``), data-loading processes (``train.num_workers``)
and batch size, each in a fresh process. Which combination is fastest depends on the
machine; on this 2-vCPU one, see README "Benchmarks".

    python bench/train_threads.py data/lines                     # the default model, 32 px
    python bench/train_threads.py /tmp/htr-real/lines-h64 \\
        -S data.height=64 -S model.preset=cpu64 -S model.input_norm=contrast
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import yaml
from _runs import ROOT, params_with  # bench/ is on the path of its scripts

WARMUP_BATCHES = 2  # the first batches pay for worker start-up and allocator warm-up


def measure(lines: Path, overrides: dict, batches: int) -> dict:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the stages set it
    import torch

    from pipeline.charset import Charset
    from pipeline.layout import LinesFolder
    from pipeline.params import parse_params
    from pipeline.training import build_module, configure_threads, datamodule_for

    params = parse_params(params_with(overrides))
    configure_threads(params)
    folder = LinesFolder(lines)
    module = build_module(params, Charset.load(folder.charset))
    network = module.model.train()
    data = datamodule_for(params, module, folder)
    data.setup("fit")
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-5)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer: logging is a no-op
    lines_read, started = 0, 0.0
    for index, batch in enumerate(data.train_dataloader()):
        if index == WARMUP_BATCHES:
            lines_read, started = 0, time.perf_counter()
        loss = module.training_step(batch, index)  # the project's loss, shortcut included
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lines_read += len(batch.texts)
        if index == WARMUP_BATCHES + batches - 1:
            break
    seconds = time.perf_counter() - started
    return {
        "cpu_threads": params.train.cpu_threads,
        "torch_threads": torch.get_num_threads(),
        "num_workers": params.train.num_workers,
        "batch_size": params.train.batch_size,
        "lines": lines_read,
        "seconds": round(seconds, 2),
        "lines_per_second": round(lines_read / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("lines", type=Path, help="a pulled lines folder (data/lines)")
    parser.add_argument("-S", dest="settings", action="append", default=[], help="key=value")
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "threads.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = dict(s.split("=", 1) for s in args.settings)
    overrides = {key: yaml.safe_load(value) if value else "" for key, value in settings.items()}
    if args.child:
        overrides.update(json.loads(args.child))
        print(json.dumps(measure(args.lines, overrides, args.batches)))
        return
    runs = []
    for threads, workers, batch in itertools.product(args.threads, args.workers, args.batch_sizes):
        one = {"train.cpu_threads": threads, "train.num_workers": workers}
        one["train.batch_size"] = batch
        command = [sys.executable, __file__, str(args.lines), "--batches", str(args.batches)]
        command += [f"-S{s}" for s in args.settings] + ["--child", json.dumps(one)]
        output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
        run = json.loads(output.stdout.strip().splitlines()[-1])
        runs.append(run)
        print(
            f"batch {batch:3d}  threads {run['torch_threads']} (cpu_threads {threads})  "
            f"workers {workers}: {run['lines_per_second']:6.1f} lines/s",
            flush=True,
        )
    results = {"lines": str(args.lines), "settings": settings, "cpus": os.cpu_count()}
    args.out.write_text(json.dumps(results | {"runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
