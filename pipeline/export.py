"""ONNX export of a trained model: ``htr export models/model.ckpt model.onnx``.

The graph takes ``images (B, 1, H, W)`` float (ink 1, paper 0, right-padded with 0) and
``widths (B,)`` int64, and returns ``log_probs (T, B, K)``, the network's own layout; batch
and width are dynamic. The charset, the input height and the blank id travel in the file's
metadata, so the ONNX file is as self-describing as the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pipeline.charset import BLANK_ID
from pipeline.lit_module import load_model
from pipeline.model import CRNN

OPSET = 17


class _LogProbs(nn.Module):
    """The network with its main head only: (images, widths) -> log_probs (T, B, K)."""

    def __init__(self, network: CRNN) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        return self.network(images, widths)[0]


def export_onnx(model_path: Path, out_path: Path) -> Path:
    import onnx

    module = load_model(model_path)
    config = module.model.config
    wrapper = _LogProbs(module.model).eval().requires_grad_(False)
    height = config.architecture.height
    images = torch.zeros(2, 1, height, 8 * height)
    widths = torch.tensor([8 * height, 5 * height])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapper,
        (images, widths),
        str(out_path),
        input_names=["images", "widths"],
        output_names=["log_probs"],
        dynamic_axes={
            "images": {0: "batch", 3: "width"},
            "widths": {0: "batch"},
            "log_probs": {0: "frames", 1: "batch"},
        },
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter handles the length-aware BiLSTM as it is
    )
    graph = onnx.load(str(out_path))
    metadata = {
        "charset": json.dumps("".join(module.charset.characters), ensure_ascii=False),
        "height": str(height),
        "blank_id": str(BLANK_ID),
        "layout": "images (B,1,H,W) ink=1 paper=0, widths (B,) -> log_probs (T,B,K)",
    }
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(out_path))
    return out_path
