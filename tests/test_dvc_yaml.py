"""dvc.yaml is the architecture diagram: check it tells the truth about the code."""

import ast
import re
from pathlib import Path

import yaml

from tests.conftest import ROOT

PACKAGES = ("pipeline", "stages")
# Commands in stages/ that users run by hand, not pipeline stages.
TOOLS = {"predict", "report"}


def _module_file(dotted: str) -> Path | None:
    path = ROOT.joinpath(*dotted.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def project_imports(module: str) -> set[str]:
    """Every project file ``module`` imports, directly or not, with the package __init__s."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        dotted = todo.pop()
        parts = dotted.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py too
        for depth in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:depth]))
            if path is None or path in seen:
                continue
            seen.add(path)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    todo += [
                        alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES
                    ]
                elif (
                    isinstance(node, ast.ImportFrom)
                    and node.module
                    and node.module.split(".")[0] in PACKAGES
                ):
                    todo.append(node.module)
                    todo += [f"{node.module}.{alias.name}" for alias in node.names]
    return {str(path.relative_to(ROOT)) for path in seen}


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _outputs(stage: dict) -> set[str]:
    paths = set()
    for key in ("outs", "metrics", "plots"):
        for entry in stage.get(key, []):
            paths.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def test_one_stage_per_stage_module():
    modules = {p.stem for p in (ROOT / "stages").glob("*.py") if not p.stem.startswith("_")}
    assert set(_stages()) == modules - TOOLS


def test_every_imported_project_module_is_a_dependency():
    for name, stage in _stages().items():
        module = re.match(r"python -m (stages\.\w+)", stage["cmd"]).group(1)
        assert module == f"stages.{name}"
        imported = project_imports(module)
        missing = sorted(imported - set(stage["deps"]))
        assert not missing, (
            f"stage {name!r} imports {missing} but dvc.yaml does not list them in deps"
        )
        stale = sorted(d for d in stage["deps"] if d.endswith(".py") and d not in imported)
        assert not stale, f"stage {name!r} lists {stale} in deps but does not import them"


def test_cmd_paths_are_declared():
    stages = _stages()
    produced = set().union(*(_outputs(stage) for stage in stages.values()))
    for name, stage in stages.items():
        declared = set(stage["deps"]) | _outputs(stage)
        for path in re.findall(r"\s(\S*/\S*)", stage["cmd"]):
            # a folder argument counts when the files in it are declared one by one
            inside = any(entry.startswith(path + "/") for entry in declared)
            assert path in declared or inside, (
                f"stage {name!r}: cmd path {path} is not in deps or outs"
            )
        for dep in stage["deps"]:
            assert (ROOT / dep).exists() or any(
                dep == out or dep.startswith(out + "/") for out in produced
            ), dep


def test_import_walker_sees_indirect_imports():
    # stages.pull -> pipeline.synthetic -> pipeline.lines -> pipeline.errors
    assert {"pipeline/errors.py", "pipeline/lines.py", "stages/__init__.py"} <= project_imports(
        "stages.pull"
    )
