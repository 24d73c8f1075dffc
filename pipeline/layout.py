"""Where things live: the lines folder that every source writes and every stage reads, and
the project's own params file (the one home of every default)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROJECT_PARAMS = PROJECT_ROOT / "params.yaml"


@dataclass(frozen=True)
class LinesFolder:
    """``<root>/{train,validation,test}.parquet`` (one line per row: image, text, id,
    writer, width, height) and ``<root>/charset.json`` (the training split's characters)."""

    root: Path

    def split(self, name: str) -> Path:
        if name not in SPLITS:
            raise ValueError(f"no split {name!r}; splits are {', '.join(SPLITS)}")
        return Path(self.root) / f"{name}.parquet"

    @property
    def charset(self) -> Path:
        return Path(self.root) / "charset.json"
