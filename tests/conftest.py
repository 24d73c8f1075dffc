"""Shared fixtures: tiny params and tiny datasets the tests make themselves (no network)."""

from __future__ import annotations

import atexit
import copy
import io
import os
import shutil
import signal
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see stages/__init__.py
# One folder for what the session leaves outside its tmp_paths, removed when it ends (below):
# datasets' cache (kept out of the user's HuggingFace cache), and the temporary files of the
# processes the tests start, which a test that SIGKILLs one leaves behind (multiprocessing's
# pymp-* folders). The tests' own process keeps the system's, already read by mkdtemp.
os.environ["HF_HOME"] = os.path.join(tempfile.mkdtemp(prefix="htr-tests-"), "hf")
os.environ["TMPDIR"] = os.path.join(os.path.dirname(os.environ["HF_HOME"]), "tmp")

import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline.params import Params, parse_params

SESSION_FOLDER = Path(os.environ["HF_HOME"]).parent
os.makedirs(os.environ["TMPDIR"])
# Each run used to leave its cache (up to 41 MB) and a few pymp-* folders in /tmp.
atexit.register(shutil.rmtree, SESSION_FOLDER, ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Popen keyword arguments for a child that must take Ctrl-C as a foreground program does.
# A suite started as a background job (`nohup make test &`, some CI runners) hands its
# children SIGINT *ignored*, and Python then never installs its KeyboardInterrupt handler.
TAKES_CTRL_C = {"preexec_fn": _default_sigint}


def project_params_dict() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params_dict() -> dict:
    """The project's params with everything shrunk to seconds of work."""
    params = copy.deepcopy(project_params_dict())
    params["synthetic"].update(train_lines=12, validation_lines=4, test_lines=4)
    params["preview"].update(lines=2, variants=2)
    params["model"]["presets"]["cpu"].update(
        stem_channels=8, widths=[8, 16, 16, 16], lstm_layers=1, lstm_hidden=32
    )
    # one training process (params.yaml trains the default run in two): the DDP test sets two
    params["train"].update(batch_size=4, max_epochs=1, early_stopping_patience=0, cpu_processes=1)
    return params


@pytest.fixture
def tiny_params() -> Params:
    return parse_params(tiny_params_dict(), "tiny params")


def png_bytes(width: int = 120, height: int = 40, mode: str = "L", color=200) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(width: int = 120, height: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (230, 230, 230)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_hub_layout(root: Path, splits: dict[str, list[tuple[bytes, str]]]) -> Path:
    """A folder laid out like the Teklia/IAM-line hub repo: data/<split>-*.parquet with
    ``image`` as struct{bytes, path} and ``text``, written by pandas (no HF metadata)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        frame = pd.DataFrame(
            {
                "image": [
                    {"bytes": image, "path": f"{split}_{i}.jpg"}
                    for i, (image, _) in enumerate(rows)
                ],
                "text": [text for _, text in rows],
            }
        )
        frame.to_parquet(root / "data" / f"{split}-00000-of-00001.parquet", index=False)
    return root
