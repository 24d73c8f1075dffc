"""Does a re-run reproduce the committed metrics? Exact where the stack makes it exact,
within a measured tolerance where floating point differs from host to host.

    python -m pipeline.verify                          # workspace metrics/ against HEAD's
    python -m pipeline.verify --expected metrics/ci --actual ci-tiny   # an experiment

The rules:

- ``data.json`` must match exactly: the same code and locked stack render and normalize the
  lines bit for bit on any host (the embedded dataset is drawn from the seed).
- In ``train.json`` and ``evaluate.json``, counts (lines, epochs, steps, parameters,
  unknown characters, dropped lines) must match exactly, and every rate (CER, WER) must be
  within ``max(relative * expected, absolute)`` of the expected value. The same training
  run gives slightly different floats on another host of the same kind (other kernels,
  other rounding), and training amplifies that; the tolerance is chosen from measured
  host-to-host spread (README, "Reproducing the committed results").
- ``*_speed.json`` are measurements of the machine, never compared.

Exit code 1 when anything is outside its tolerance, with a table saying what.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

EXACT_FILES = ("data.json",)
TOLERANT_FILES = ("train.json", "evaluate.json")
# Measured spread between hosts of this kind for the default run: 2.2-2.5 % relative on
# CER (test beam 0.1646 vs 0.1682, validation 0.0276 vs 0.0283), up to ~5 % on emulated
# hosts, 6.5 % on a CER and 7.5 % on a WER on an AMD EPYC host (README). 10 % is 1.3x the
# largest seen on a rate the floor below does not cover; a halved schedule moves them 30-80 %.
RELATIVE_TOLERANCE = 0.10
# A host moves a rate by a number of characters, not by a share of it: a second AMD EPYC
# host moved validation greedy, beam and beam+LM CER by 0.0046-0.0063 together (~50-60 of
# the split's ~10,000 characters), 6 % of greedy's 0.10 but 11-12 % of beam+LM's 0.04
# (README). So small rates get a floor, 1.3x the largest move 10 % did not cover (0.0050).
ABSOLUTE_TOLERANCE = 0.0065


class VerifyError(PipelineError):
    pass


@dataclass(frozen=True)
class Check:
    file: str
    key: str
    expected: object
    actual: object
    ok: bool
    rule: str


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def resolve_rev(name: str) -> str:
    """A git revision, or the name of a ``dvc exp`` (its ref under refs/exps)."""
    if _git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}").returncode == 0:
        return name
    # dvc keeps an experiment at refs/exps/<baseline[:2]>/<baseline[2:]>/<name>; the same
    # name may exist for several baselines: HEAD's first (as dvc resolves it), else the newest
    head = _git("rev-parse", "HEAD").stdout.strip()
    refs = _git(
        "for-each-ref", "--sort=-committerdate", "--format=%(refname)", "refs/exps"
    ).stdout.split()
    matches = [ref for ref in refs if ref.rsplit("/", 1)[-1] == name]
    if not matches:
        raise VerifyError(f"{name}: neither a git revision nor a dvc experiment")
    of_head = f"refs/exps/{head[:2]}/{head[2:]}/{name}"
    return of_head if of_head in matches else matches[0]


def read_metrics(source: str, name: str) -> dict:
    """``metrics/<name>`` of a folder (e.g. ``metrics`` or ``metrics/ci``) or of a revision."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise VerifyError(f"{path}: missing") from None
    rev = resolve_rev(source)
    shown = _git("show", f"{rev}:metrics/{name}")
    if shown.returncode != 0:
        raise VerifyError(f"{source}: no metrics/{name} ({shown.stderr.strip()})")
    return json.loads(shown.stdout)


def _leaves(data: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, data


def within(expected: float, actual: float, relative: float, absolute: float) -> bool:
    return abs(actual - expected) <= max(relative * abs(expected), absolute)


def compare_file(
    name: str, expected: dict, actual: dict, exact: bool, relative: float, absolute: float
) -> list[Check]:
    want = dict(_leaves(expected))
    got = dict(_leaves(actual))
    checks = []
    for key in sorted(want.keys() | got.keys()):
        old, new = want.get(key), got.get(key)
        if exact or not isinstance(old, float) or not isinstance(new, float):
            checks.append(Check(name, key, old, new, old == new, "exact"))
        else:
            rule = f"±{max(relative * abs(old), absolute):.4f}"
            checks.append(Check(name, key, old, new, within(old, new, relative, absolute), rule))
    return checks


def verify(
    expected: str,
    actual: str,
    relative: float = RELATIVE_TOLERANCE,
    absolute: float = ABSOLUTE_TOLERANCE,
    files: tuple[str, ...] = EXACT_FILES + TOLERANT_FILES,
) -> list[Check]:
    checks = []
    for name in files:
        checks += compare_file(
            name,
            read_metrics(expected, name),
            read_metrics(actual, name),
            exact=name in EXACT_FILES,
            relative=relative,
            absolute=absolute,
        )
    return checks


def render(checks: list[Check], expected: str, actual: str) -> str:
    failed = [c for c in checks if not c.ok]
    shown = [
        c for c in checks if not c.ok or c.expected != c.actual or c.key.endswith(("cer", "wer"))
    ]
    lines = [
        f"verify: {actual} against {expected}: {len(checks)} values, "
        f"{len(failed)} outside tolerance",
        "",
        "| file | key | expected | actual | allowed | |",
        "|---|---|---|---|---|---|",
    ]
    for c in shown:
        lines.append(
            f"| {c.file} | {c.key} | {c.expected} | {c.actual} | {c.rule} | "
            f"{'ok' if c.ok else '**FAIL**'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--expected", default="HEAD", help="folder of metrics or git rev (default: HEAD)"
    )
    parser.add_argument(
        "--actual", default="metrics", help="folder of metrics, git rev or dvc exp name"
    )
    parser.add_argument("--relative", type=float, default=RELATIVE_TOLERANCE)
    parser.add_argument("--absolute", type=float, default=ABSOLUTE_TOLERANCE)
    parser.add_argument(
        "--save-to",
        type=Path,
        help="instead of comparing, write the --actual metrics here (a new baseline to commit)",
    )
    args = parser.parse_args(argv)
    if args.save_to:
        args.save_to.mkdir(parents=True, exist_ok=True)
        for name in EXACT_FILES + TOLERANT_FILES:
            data = read_metrics(args.actual, name)
            (args.save_to / name).write_text(json.dumps(data, indent=2) + "\n")
        print(f"verify: metrics of {args.actual} written to {args.save_to}")
        return
    try:
        checks = verify(args.expected, args.actual, args.relative, args.absolute)
    except PipelineError as error:
        print(f"[verify] error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(render(checks, args.expected, args.actual))
    sys.exit(0 if all(c.ok for c in checks) else 1)


if __name__ == "__main__":
    main()
