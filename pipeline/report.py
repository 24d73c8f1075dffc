"""A markdown report of what a change did: params and metrics diffed against a base.

    htr report                       # workspace vs the base (see below)
    htr report --base main --target exp-1a2b3 -o report.md

The base defaults to the previous commit on ``main`` and to ``main`` on any other branch.
The target is a commit, a branch or a ``dvc exp`` name (default: the workspace). Quality
metrics that got worse are flagged; speed metrics are listed apart (they vary by machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pipeline.command import run_command
from pipeline.errors import PipelineError

# For these metric names a lower value is better; every other one is reported neutrally.
LOWER_IS_BETTER = ("cer", "wer", "loss", "dropped", "unknown", "nonfinite")
SPEED_FILE_SUFFIX = "_speed.json"


class ReportError(PipelineError):
    pass


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def default_base() -> str:
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    if branch in ("main", "HEAD", "") and _git("rev-parse", "--verify", "--quiet", "HEAD~1"):
        return "HEAD~1"
    return "main"


def exp_diff(base: str, target: str | None) -> dict:
    command = [
        sys.executable,
        "-m",
        "dvc",
        "exp",
        "diff",
        base,
        *([target] if target else []),
        "--json",
        "--all",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ReportError(f"`{' '.join(command[2:])}` failed: {result.stderr.strip()}")
    return json.loads(result.stdout or "{}")


def _number(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _verdict(name: str, old, new) -> str:
    if not isinstance(old, int | float) or not isinstance(new, int | float) or old == new:
        return ""
    if not any(word in name for word in LOWER_IS_BETTER):
        return "changed"
    return "**worse**" if new > old else "better"


def _rows(section: dict, with_verdict: bool) -> list[tuple[str, str, str, str, str, str]]:
    rows = []
    for path, entries in sorted(section.items()):
        for name, change in sorted(entries.items()):
            old, new, delta = change.get("old"), change.get("new"), change.get("diff")
            verdict = (
                _verdict(name, old, new) if with_verdict else ("changed" if old != new else "")
            )
            rows.append((path, name, _number(old), _number(new), _number(delta), verdict))
    return rows


def _table(rows, header=("file", "name", "base", "new", "change", "")) -> list[str]:
    if not rows:
        return ["_no changes_", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = list(row)
        if row[-1]:  # highlight what changed
            cells[1] = f"**{cells[1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def render(diff: dict, base: str, target: str | None) -> str:
    metrics = diff.get("metrics", {})
    quality = {p: v for p, v in metrics.items() if not p.endswith(SPEED_FILE_SUFFIX)}
    speed = {p: v for p, v in metrics.items() if p.endswith(SPEED_FILE_SUFFIX)}
    params = diff.get("params", {})
    changed_params = {
        p: {k: v for k, v in e.items() if v.get("old") != v.get("new")} for p, e in params.items()
    }
    # every quality metric that moved, and the headline CER/WER figures even when they did not
    quality_rows = [
        row
        for row in _rows(quality, with_verdict=True)
        if row[-1] or row[1].endswith(("cer", "wer"))
    ]
    worse = sum(1 for row in quality_rows if row[-1] == "**worse**")
    lines = [
        f"## Pipeline report: `{target or 'workspace'}` against `{base}`",
        "",
        f"{worse} quality metric(s) got worse." if worse else "No quality metric got worse.",
        "",
        "### Params that changed",
        "",
        *_table(_rows(changed_params, with_verdict=False)),
        "### Quality metrics",
        "",
        *_table(quality_rows),
        "### Speed (machine-dependent)",
        "",
        *_table(_rows(speed, with_verdict=False)),
        "### Plots",
        "",
        f"`dvc plots diff {base}{' ' + target if target else ''} --open` draws the curves "
        "(dvclive/plots), CER by length and by writer (reports/plots) and the worst test "
        "lines (reports/worst_lines.png) of both side by side.",
        "",
    ]
    return "\n".join(lines)


def report(base: str | None, target: str | None, output: Path | None) -> str:
    base = base or default_base()
    text = render(exp_diff(base, target), base, target)
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", help="git rev or experiment to compare against")
    parser.add_argument("--target", help="git rev or experiment name (default: the workspace)")
    parser.add_argument(
        "-o", "--output", type=Path, help="write the markdown here instead of stdout"
    )
    args = parser.parse_args(argv)

    run_command("report", lambda: report(args.base, args.target, args.output))


if __name__ == "__main__":
    main()
