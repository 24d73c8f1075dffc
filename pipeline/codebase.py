"""The project's own source files a module runs: what DVC must list as a stage's deps
(tests/test_dvc_yaml.py), and what a resumable training run must not have changed under it."""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.layout import PROJECT_ROOT

PACKAGES = ("pipeline", "stages")


def _module_file(dotted: str) -> Path | None:
    path = PROJECT_ROOT.joinpath(*dotted.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def project_imports(module: str) -> set[Path]:
    """Every project file ``module`` imports, directly or not, with the package __init__s
    (read statically: imports inside functions count too)."""
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
    return seen
