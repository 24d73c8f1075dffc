"""Running the real stages outside DVC, in a scratch folder, with params overridden the way
``dvc exp run -S key=value`` does: for the bench scripts (ablations, the GPU check)."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def params_with(overrides: dict, base: Path = ROOT / "params.yaml") -> dict:
    """params.yaml with dotted keys (``train.batch_size``) replaced; unknown keys refused."""
    params = yaml.safe_load(base.read_text())
    for dotted, value in overrides.items():
        section = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            section = section[key]
        if leaf not in section:
            raise KeyError(f"unknown params key {dotted}")
        section[leaf] = value
    return params


def set_options(command: str) -> dict:
    """``{key: value}`` of the ``-S key=value`` options in a ``dvc exp run`` command line."""
    words = shlex.split(command)
    settings = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
    return {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in settings)}


def makefile_overrides(variable: str) -> dict:
    """The ``-S key=value`` settings of a Makefile variable (e.g. CI_EXPERIMENT, REAL_RECIPE),
    their one home, as a dict for ``params_with``."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith(f"{variable} :="):
            return set_options(line.split(":=", 1)[1])
    raise KeyError(f"Makefile: no {variable} := line")


def readme_recipe_overrides(recipe: str) -> dict:
    """The ``-S key=value`` settings of README's ``<!-- recipe: NAME -->`` command (e.g.
    iam-gpu), their one home, as a dict for ``params_with``."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- recipe: {re.escape(recipe)} -->\s*```bash\n(.*?)```", text, re.S)
    if found is None:
        raise KeyError(f"README: no recipe {recipe}")
    return set_options(found.group(1))


class StageRunner:
    """``python -m stages.<name> --params <folder>/params.yaml ...``, logged to log.txt."""

    def __init__(self, folder: Path, params: dict, env: dict | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.params_file = folder / "params.yaml"
        self.model = folder / "model.ckpt"  # what train() writes
        self.params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))

    def __call__(self, stage: str, **paths: Path | str) -> None:
        args = [f"--{key}={value}" for key, value in paths.items()]
        command = [sys.executable, "-m", f"stages.{stage}", f"--params={self.params_file}", *args]
        with open(self.folder / "log.txt", "a") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            subprocess.run(command, cwd=ROOT, env=self.env, check=True, stdout=log, stderr=log)

    def pull(self, lines: Path) -> None:
        self("pull", out=lines, metrics=lines.parent / f"{lines.name}-data.json")

    def train(self, lines: Path) -> Path:
        f = self.folder
        self("train", lines=lines, model=self.model, checkpoints=f / "checkpoints",
             live=f / "dvclive", metrics=f / "train.json", speed=f / "train_speed.json")  # fmt: skip
        return self.model

    def lm(self, lines: Path) -> Path:
        self(
            "lm", lines=lines, out=self.folder / "lm.json", metrics=self.folder / "lm_metrics.json"
        )
        return self.folder / "lm.json"

    def evaluate(self, lines: Path, model: Path, lm: Path | None = None) -> None:
        f = self.folder
        extra = {"lm": lm} if lm else {}
        self("evaluate", model=model, **extra, lines=lines, metrics=f / "evaluate.json",
             speed=f / "evaluate_speed.json", predictions=f / "predictions.parquet",
             plots=f / "plots", worst=f / "worst_lines.png")  # fmt: skip


def training_parquets(source: Path, target: Path) -> Iterator[tuple[Path, Path]]:
    """For the bench copies of a hub-layout folder: copies every split but training into
    ``target/data`` as it is, and yields (source file, target file) for each training one."""
    (target / "data").mkdir(parents=True, exist_ok=True)
    for path in sorted((source / "data").glob("*.parquet")):
        out = target / "data" / path.name
        if path.name.startswith("train"):
            yield path, out
        else:
            shutil.copyfile(path, out)


def read_split_from_args(doc: str, argv: list[str] | None = None):
    """For the test-time scripts (tta.py, tta_select.py): ``MODEL LINES [--split] [--params]
    [--lm]`` parsed (from ``argv``, else the command line), and (the recognizer on the CPU,
    the split's LineDataset)."""
    from pipeline.data import LineDataset  # torch: only for the scripts that read lines
    from pipeline.layout import PROJECT_PARAMS, LinesFolder
    from pipeline.recognizer import Recognizer

    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("lines", type=Path)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--params", type=Path, default=PROJECT_PARAMS, help="decoder settings")
    parser.add_argument("--lm", type=Path, help="character LM: adds the beam_lm decoder")
    args = parser.parse_args(argv)
    recognizer = Recognizer.load(args.model, device="cpu", params=args.params, lm=args.lm)
    split = LinesFolder(args.lines).split(args.split)
    return recognizer, LineDataset(split, recognizer.charset, recognizer.height)
