"""How far do the quality metrics move from host to host? The same run under other CPU
kernel paths (what another host of the same kind would pick), compared with the committed
metrics by ``pipeline.verify``: the measurement behind its tolerance.

    python bench/host_spread.py --run default --kernels avx2      # the committed default run
    python bench/host_spread.py --run ci --kernels native avx2 avx512   # the CI experiment

``native`` is this host as it is; ``avx2`` an AVX2-only host (ATen, oneDNN and MKL held to
AVX2); ``avx512`` an AVX-512 host without AMX. Prints each run's largest relative change
of a CER/WER and writes ``bench/results/host_spread.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _runs import (  # bench/ is on the path of its scripts
    ROOT,
    StageRunner,
    makefile_overrides,
    params_with,
)

KERNELS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_CBWR": "AVX512"},
}


def spread(expected: dict, actual: dict) -> float:
    """The largest relative change of a CER/WER between two metrics files."""
    from pipeline.verify import _leaves

    old, new = dict(_leaves(expected)), dict(_leaves(actual))
    changes = [
        abs(new[key] - value) / value
        for key, value in old.items()
        if key.endswith(("cer", "wer")) and isinstance(value, float) and value > 0
    ]
    return max(changes, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", choices=["default", "ci"], required=True)
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/htr-host-spread"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/host_spread.json")
    args = parser.parse_args()
    import sys

    sys.path.insert(0, str(ROOT))
    from pipeline.verify import render, verify

    expected = ROOT / ("metrics" if args.run == "default" else "metrics/ci")
    overrides = {} if args.run == "default" else makefile_overrides("CI_EXPERIMENT")
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for kernel in args.kernels:
        run = StageRunner(
            args.work / f"{args.run}-{kernel}", params_with(overrides), KERNELS[kernel]
        )
        lines = run.folder / "lines"
        run.pull(lines)
        run.evaluate(lines, run.train(lines), run.lm(lines))  # beam_lm too, as dvc repro
        actual = run.folder / "metrics"
        actual.mkdir(exist_ok=True)
        (actual / "data.json").write_text((run.folder / "lines-data.json").read_text())
        for name in ("train.json", "evaluate.json"):
            (actual / name).write_text((run.folder / name).read_text())
        checks = verify(str(expected), str(actual))
        print(render(checks, str(expected), f"{args.run} on {kernel} kernels"))
        worst = max(
            spread(json.loads((expected / n).read_text()), json.loads((actual / n).read_text()))
            for n in ("train.json", "evaluate.json")
        )
        results[f"{args.run}-{kernel}"] = {
            "largest_relative_change": round(worst, 4),
            "outside_tolerance": [f"{c.file}:{c.key}" for c in checks if not c.ok],
        }
        print(f"{args.run} on {kernel}: largest relative CER/WER change {worst:.2%}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
