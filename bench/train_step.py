"""One training-throughput measurement, in its own process (OMP_WAIT_POLICY must be set
before torch loads): prints one JSON line.

    python bench/train_step.py --config cpu --omp passive --steps 20
    python bench/train_step.py --config reference --omp default --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--config", choices=["cpu", "reference"], required=True)
parser.add_argument("--omp", choices=["passive", "default"], required=True)
parser.add_argument("--steps", type=int, required=True)
args = parser.parse_args()
if args.omp == "passive":
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
else:
    os.environ.pop("OMP_WAIT_POLICY", None)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.model import CRNN, ModelConfig  # noqa: E402
from pipeline.params import load_params  # noqa: E402

CLASSES = 80
CHARS_PER_LINE = 40


class ReferenceCRNN(nn.Module):
    """The reference design: lines stretched to 128x1000, the ResNet-34-style encoder,
    average-pooled to a fixed 96 frames, 4x BiLSTM-256."""

    def __init__(self, encoder: CRNN) -> None:
        super().__init__()
        self.stem, self.encoder = encoder.stem, encoder.encoder
        self.pool = nn.AdaptiveAvgPool2d((1, 96))
        self.lstm = nn.LSTM(512, 256, num_layers=4, bidirectional=True)
        self.classifier = nn.Linear(512, CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.encoder(self.stem(images)))[:, :, 0]  # (B, C, 96)
        sequence, _ = self.lstm(features.permute(2, 0, 1))  # (96, B, 512)
        return self.classifier(sequence).log_softmax(-1)  # (96, B, K)


def build():
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    if args.config == "cpu":
        model = CRNN(ModelConfig(params.model.presets["cpu"], "max", True, "none", CLASSES))
        batch, height, width = (
            params.train.batch_size,
            params.model.presets["cpu"].height,
            200,
        )  # mean width

        def loss_fn(images):
            widths = torch.full((batch,), width)
            log_probs, shortcut = model(images, widths)
            frames = model.output_lengths(widths)
            return ctc(log_probs, frames) + 0.1 * ctc(shortcut, frames)
    else:
        reference = params.model.presets["reference"]
        model = ReferenceCRNN(CRNN(ModelConfig(reference, "avg", False, "none", CLASSES)))
        batch, height, width = 8, 128, 1000

        def loss_fn(images):
            log_probs = model(images)
            return ctc(log_probs, torch.full((batch,), log_probs.shape[0]))

    targets = torch.randint(1, CLASSES, (batch, CHARS_PER_LINE))

    def ctc(log_probs, frames):
        lengths = torch.full((batch,), CHARS_PER_LINE)
        return nn.functional.ctc_loss(log_probs, targets, frames, lengths, zero_infinity=True)

    return model, loss_fn, torch.rand(batch, 1, height, width), batch


def matmul_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(5):
        torch.mm(a, b)
    return 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9


model, loss_fn, images, batch = build()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)


def step() -> None:
    optimizer.zero_grad()
    loss_fn(images).backward()
    optimizer.step()


with FlopCounterMode(display=False) as counter:
    step()  # also the warm-up
flops = counter.get_total_flops()
start = time.perf_counter()
for _ in range(args.steps):
    step()
seconds = (time.perf_counter() - start) / args.steps
print(
    json.dumps(
        {
            "config": args.config,
            "omp": args.omp,
            "threads": torch.get_num_threads(),
            "batch": batch,
            "input": list(images.shape[-2:]),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds_per_step": round(seconds, 4),
            "lines_per_second": round(batch / seconds, 2),
            "gflop_per_step": round(flops / 1e9, 2),
            "achieved_gflops": round(flops / seconds / 1e9, 2),
            "matmul_peak_gflops": round(matmul_gflops(), 1),
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
    )
)
