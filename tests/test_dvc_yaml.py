"""dvc.yaml is the architecture diagram: check it tells the truth about the code."""

import re

import yaml

from pipeline import codebase
from tests.conftest import ROOT


def project_imports(module: str) -> set[str]:
    return {str(path.relative_to(ROOT)) for path in codebase.project_imports(module)}


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _outputs(stage: dict) -> set[str]:
    paths = set()
    for key in ("outs", "metrics", "plots"):
        for entry in stage.get(key, []):
            paths.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def test_one_stage_per_stage_module():
    # stages/ holds exactly the DVC stages: no helpers, no commands users run by hand
    modules = {p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__"}
    assert set(_stages()) == modules


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
