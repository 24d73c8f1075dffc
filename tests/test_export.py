"""ONNX export: onnxruntime reads lines as torch does; the htr command."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from pipeline.data import LineDataset, WidthBucketBatches, collate
from pipeline.export import export_onnx
from pipeline.greedy import greedy_decode
from pipeline.layout import LinesFolder
from pipeline.lit_module import load_model
from pipeline.pull import pull
from pipeline.training import TrainOutputs, train
from tests.conftest import ROOT


def _train(root, params):
    pull(params, root / "lines", root / "data.json")
    outputs = TrainOutputs(root / "model.ckpt", root / "checkpoints", root / "live",
                           root / "train.json", root / "speed.json")  # fmt: skip
    train(params, LinesFolder(root / "lines"), outputs)
    return root / "model.ckpt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pipeline.params import parse_params
    from tests.conftest import tiny_params_dict

    mapping = tiny_params_dict()
    mapping["synthetic"].update(train_lines=24, validation_lines=12, test_lines=12)
    mapping["train"].update(max_epochs=2)
    params = parse_params(mapping)
    root = tmp_path_factory.mktemp("export")
    return params, root, _train(root, params)


def test_onnxruntime_reads_lines_of_any_width_as_torch_does(trained, tmp_path):
    _, root, model_path = trained
    _assert_onnx_matches_torch(model_path, root, tmp_path)


POILUS = ROOT.parent / "shared" / "data" / "poilus-b1"


@pytest.mark.slow
@pytest.mark.skipif(not POILUS.is_dir(), reason="../shared/data is not beside the project")
def test_onnxruntime_reads_real_handwriting_as_torch_does(trained, tmp_path):
    """Real scanned lines (poilus-b1's validation split, 142 lines of 7 writers), pulled
    at the model's height, through a contrast-normalized model."""
    params, _, _ = trained
    real = dataclasses.replace(
        params,
        data=dataclasses.replace(
            params.data, source="hub", hub_id=str(POILUS), max_bad_fraction=0.05
        ),
        model=dataclasses.replace(params.model, input_norm="contrast"),
    )
    pull(real, tmp_path / "lines", tmp_path / "data.json")
    model_path = tmp_path / "model.ckpt"
    outputs = TrainOutputs(model_path, tmp_path / "checkpoints", tmp_path / "live",
                           tmp_path / "train.json", tmp_path / "speed.json")  # fmt: skip
    train(dataclasses.replace(real, train=dataclasses.replace(real.train, max_epochs=1)),
          LinesFolder(tmp_path / "lines"), outputs)  # fmt: skip
    _assert_onnx_matches_torch(model_path, tmp_path, tmp_path)


def _assert_onnx_matches_torch(model_path, root, tmp_path):
    onnx_path = export_onnx(model_path, tmp_path / "model.onnx")
    module = load_model(model_path)
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(meta["charset"]) == "".join(module.charset.characters)
    assert int(meta["height"]) == module.model.config.architecture.height

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    dataset = LineDataset(
        root / "lines" / "validation.parquet", module.charset, int(meta["height"])
    )
    assert len(set(dataset.widths)) > 5  # lines of many widths, batched with padding
    for indices in WidthBucketBatches(dataset.widths, 5, shuffle=False, seed=0):
        batch = collate([dataset[i] for i in indices])
        (log_probs,) = session.run(
            None, {"images": batch.images.numpy(), "widths": batch.widths.numpy()}
        )
        with torch.no_grad():
            expected, _ = module.model(batch.images, batch.widths)  # (T, B, K)
        np.testing.assert_allclose(log_probs, expected.numpy(), atol=1e-3)
        frames = module.model.output_lengths(batch.widths)
        texts = [h.text for h in greedy_decode(torch.from_numpy(log_probs), frames, module.charset)]
        assert texts == [h.text for h in greedy_decode(expected, frames, module.charset)]


def test_a_contrast_normalized_model_exports_too(trained, tmp_path):
    # per-line quantiles by sorting (ONNX has no quantile operator)
    params, root, _ = trained
    contrast = dataclasses.replace(
        params, model=dataclasses.replace(params.model, input_norm="contrast")
    )
    _assert_onnx_matches_torch(_train(tmp_path, contrast), root, tmp_path)


def test_the_htr_command(trained, tmp_path):
    _, _, model_path = trained
    htr = [sys.executable, "-m", "pipeline.cli"]
    shown = subprocess.run([*htr, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert shown.returncode == 0 and "htr export" in shown.stdout
    assert subprocess.run([*htr, "nonsense"], cwd=ROOT, capture_output=True).returncode == 2
    out = tmp_path / "m.onnx"
    done = subprocess.run(
        [*htr, "export", str(model_path), str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and out.stat().st_size > 0, done.stderr
    help_text = subprocess.run(
        [*htr, "predict", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "--decoder" in help_text.stdout
