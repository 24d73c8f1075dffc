"""What bf16 autocast buys a CPU training step: the network's forward (under
``torch.autocast("cpu", bfloat16)``, as ``train.precision: bf16-mixed`` runs it), backward
and AdamW step against fp32, for the default model on the embedded 32 px lines and the
real-handwriting recipe on 64 px lines, widths drawn anew each step and padded to a multiple
of 32 px as the loader pads them (``bench/pad_multiple.py``'s step). Two rounds alternating,
one compute thread as the stages use.

A CPU with bf16 instructions (``avx512_bf16``, ``amx_bf16`` in /proc/cpuinfo) runs oneDNN's
bf16 convolutions, matrix products and LSTM natively; without them bf16 is emulated.
``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI python bench/cpu_bf16.py`` holds oneDNN to the
instructions before bf16 (ATen's own kernels still see the CPU).

    python bench/cpu_bf16.py     # ~2 min; writes bench/results/cpu_bf16.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the stages set it, before torch loads

import torch
from pad_multiple import CONFIGS, measure  # bench/ is on the path of its scripts
from real import cpu_model, cpuinfo


def bf16_flags() -> list[str]:
    return sorted(f for f in (cpuinfo("flags") or "").split() if "bf16" in f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "cpu_bf16.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    host = {
        "host": cpu_model(),
        "bf16_flags": bf16_flags(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
    }
    rows = []
    for preset, norm, batch, low, high in CONFIGS:
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(args.rounds):
            for precision in times:
                seconds = measure(
                    preset, norm, batch, low, high, 32, args.steps, bf16=precision == "bf16"
                )
                times[precision].append(round(1000 * seconds, 1))
        row = {
            "preset": preset,
            "batch": batch,
            "widths": f"{low}-{high}, multiple of 32",
            "ms_per_step_fp32": times["fp32"],
            "ms_per_step_bf16": times["bf16"],
            "fp32_over_bf16": round(sum(times["fp32"]) / sum(times["bf16"]), 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    key = (host["host"], host["onednn_max_cpu_isa"])
    results = [r for r in results if (r["host"], r["onednn_max_cpu_isa"]) != key]
    args.out.write_text(json.dumps([*results, {**host, "steps": rows}], indent=1) + "\n")


if __name__ == "__main__":
    main()
