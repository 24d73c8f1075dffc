"""The CRNN as a plain ``nn.Module``: ResNet encoder -> column pooling -> BiLSTM -> classes.

Tensor layout, stated once:
  images      (B, 1, H, W)  float, ink = 1, paper = 0, right-padded with 0
  features    (B, C, H', T) after the encoder; T follows the image width
  columns     (T, B, C)     after pooling over H' (CTC's time-major layout)
  log_probs   (T, B, K)     log-softmax over K = charset size + blank
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from pipeline.params import ArchitectureParams


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    architecture: ArchitectureParams
    column_pool: str  # "max" | "avg"
    shortcut: bool
    input_norm: str  # "none" | "contrast": see normalize_contrast
    num_classes: int

    def to_dict(self) -> dict:
        data = asdict(self)
        data["architecture"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in data["architecture"].items()
        }
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        arch = {k: tuple(v) if isinstance(v, list) else v for k, v in data["architecture"].items()}
        return cls(
            architecture=ArchitectureParams(**arch),
            column_pool=data["column_pool"],
            shortcut=data["shortcut"],
            # checkpoints written before input_norm existed were trained without it
            input_norm=data.get("input_norm", "none"),
            num_classes=data["num_classes"],
        )


# Quantiles of each line's own pixels (ink = 1, paper = 0): the median is the paper (most of
# a line is paper), the 99th percentile the ink.
PAPER_QUANTILE = 0.5
INK_QUANTILE = 0.99
MIN_CONTRAST = 0.1  # a blank line is not stretched into noise


def _valid_quantiles(
    pixels: torch.Tensor, valid: torch.Tensor, quantiles: tuple[float, ...]
) -> torch.Tensor:
    """Per line, quantiles (linear interpolation, as ``torch.quantile``) of the pixels in
    its valid columns: ``pixels (B, H, W)``, ``valid (B, W)`` -> ``(Q, B)``. Sort-based, so
    it exports to ONNX (which has no quantile operator): padding sorts last as +inf."""
    height = pixels.shape[1]
    values = pixels.float().masked_fill(~valid[:, None, :], float("inf")).flatten(1)  # (B, H*W)
    ordered = values.sort(dim=1).values  # (B, H*W), the valid pixels first
    last = (valid.sum(dim=1) * height - 1).clamp(min=0).float()  # (B,) index of the largest
    levels = []
    for q in quantiles:
        position = q * last  # (B,)
        low = position.floor()
        high = torch.minimum(low + 1, last)
        below = ordered.gather(1, low.long()[:, None])[:, 0]
        above = ordered.gather(1, high.long()[:, None])[:, 0]
        levels.append(below + (position - low) * (above - below))
    return torch.stack(levels)


def normalize_contrast(images: torch.Tensor, widths: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, H, W) -> the same, each line stretched so its paper is 0 and its ink 1.

    Real scans have grey paper and faint or dark ink; rendered lines are near white and
    black. Stretching every line to the same range makes both look alike to the encoder.
    The right padding (beyond ``widths``) stays 0.
    """
    batch, _, _, width = images.shape
    if widths is None:
        widths = torch.full((batch,), width, device=images.device)
    valid = torch.arange(width, device=images.device)[None, :] < widths[:, None]  # (B, W)
    levels = _valid_quantiles(images[:, 0], valid, (PAPER_QUANTILE, INK_QUANTILE))  # (2, B)
    paper = levels[0][:, None, None, None]
    contrast = (levels[1] - levels[0]).clamp(min=MIN_CONTRAST)[:, None, None, None]
    stretched = ((images - paper) / contrast).clamp(0.0, 1.0)
    return stretched * valid[:, None, None, :]


def reverse_within_lengths(sequence: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(T, B, C): reverse each line's first ``lengths[b]`` frames, leave its padding in place."""
    time = torch.arange(sequence.shape[0], device=sequence.device)[:, None]  # (T, 1)
    lengths = lengths.to(sequence.device)[None, :]  # (1, B)
    index = torch.where(time < lengths, lengths - 1 - time, time)  # (T, B)
    return sequence.gather(0, index[:, :, None].expand_as(sequence))


class LengthAwareBiLSTM(nn.Module):
    """Stacked BiLSTM whose backward direction starts at each line's own last frame.

    A plain ``nn.LSTM(bidirectional=True)`` on a padded batch starts the backward pass in
    the padding, so a line's output depends on its batch. Packed sequences fix that but
    cost ~50 % more per step on CPU here; reversing each line within its length and
    running one-directional LSTMs gives the same result at the plain LSTM's cost.
    """

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        sizes = [input_size] + [2 * hidden] * (layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(size, hidden) for size in sizes)
        self.backward_layers = nn.ModuleList(nn.LSTM(size, hidden) for size in sizes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, sequence: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(T, B, C), lengths (B,) -> (T, B, 2 * hidden)"""
        for depth, (forward, backward) in enumerate(
            zip(self.forward_layers, self.backward_layers, strict=True)
        ):
            if depth:
                sequence = self.dropout(sequence)
            ahead, _ = forward(sequence)  # (T, B, H)
            behind, _ = backward(reverse_within_lengths(sequence, lengths))  # (T, B, H)
            sequence = torch.cat([ahead, reverse_within_lengths(behind, lengths)], dim=-1)
        return sequence


def _conv_out(length: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    return torch.div(length + 2 * padding - kernel, stride, rounding_mode="floor") + 1


# oneDNN's channels-last backward of a strided 1x1 convolution reading fewer channels than
# its register block (16 with AVX-512, 8 with AVX2) writes past a workspace: heap corruption
# or wrong weight gradients (uxlfoundation/oneDNN#6035, open; reproduced here with torch
# 2.11 at 8 channels). Every shipped preset reads 32 or more there.
ONEDNN_SAFE_CHANNELS = 16


def channels_last_is_safe(network: nn.Module) -> bool:
    """Whether no strided 1x1 convolution of ``network`` reads fewer than 16 channels."""
    return not any(
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size == (1, 1)
        and layer.stride != (1, 1)
        and layer.in_channels < ONEDNN_SAFE_CHANNELS
        for layer in network.modules()
    )


class CRNN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        arch = config.architecture
        stem_padding = arch.stem_kernel // 2
        stem: list[nn.Module] = [
            nn.Conv2d(
                1, arch.stem_channels, arch.stem_kernel, arch.stem_stride, stem_padding, bias=False
            ),
            nn.BatchNorm2d(arch.stem_channels),
            nn.ReLU(inplace=True),
        ]
        if arch.stem_pool:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)

        stages: list[nn.Module] = []
        channels = arch.stem_channels
        for width, blocks, h_stride, w_stride in zip(
            arch.widths, arch.blocks, arch.height_strides, arch.width_strides, strict=True
        ):
            stride = (h_stride, w_stride)
            downsample = None
            if stride != (1, 1) or channels != width:
                downsample = nn.Sequential(
                    nn.Conv2d(channels, width, 1, stride, bias=False), nn.BatchNorm2d(width)
                )
            layers = [BasicBlock(channels, width, stride, downsample)]  # type: ignore[arg-type]
            layers += [BasicBlock(width, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.encoder = nn.Sequential(*stages)
        if channels_last_is_safe(self):
            # oneDNN's channels-last convolutions: a training step 8-16 % quicker on this
            # CPU, more on wider lines (README, Benchmarks); the same function.
            self.stem.to(memory_format=torch.channels_last)
            self.encoder.to(memory_format=torch.channels_last)

        self.lstm = LengthAwareBiLSTM(
            channels, arch.lstm_hidden, arch.lstm_layers, arch.lstm_dropout
        )
        self.classifier = nn.Linear(2 * arch.lstm_hidden, config.num_classes)
        # CTC shortcut (arXiv 2404.11339): a 1-D conv straight from the CNN columns to the
        # classes, trained with its own CTC loss so the encoder gets a direct signal.
        self.shortcut = (
            nn.Conv1d(channels, config.num_classes, kernel_size=3, padding=1)
            if config.shortcut
            else None
        )

    def output_lengths(self, widths: torch.Tensor) -> torch.Tensor:
        """Frames T produced for images of these widths (px), by the encoder's arithmetic."""
        arch = self.config.architecture
        length = _conv_out(widths, arch.stem_kernel, arch.stem_stride, arch.stem_kernel // 2)
        if arch.stem_pool:
            length = _conv_out(length, 3, 2, 1)
        for stride in arch.width_strides:
            length = _conv_out(length, 3, stride, 1)  # BasicBlock's first 3x3 conv
        return length

    def forward(
        self, images: torch.Tensor, widths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images (B, 1, H, W), real widths (B,) -> log_probs (T, B, K), shortcut (T, B, K) or None.

        With ``widths`` (needed for padded batches), the BiLSTM reads each line only up to
        its own last frame; without, every image is taken as unpadded.
        """
        if self.config.input_norm == "contrast":
            images = normalize_contrast(images, widths)
        features = self.encoder(self.stem(images))  # (B, C, H', T)
        pool = features.amax if self.config.column_pool == "max" else features.mean
        columns = pool(dim=2)  # (B, C, T)
        shortcut = None
        if self.shortcut is not None:
            shortcut = self.shortcut(columns).permute(2, 0, 1).float().log_softmax(-1)  # (T, B, K)
        sequence = columns.permute(2, 0, 1)  # (T, B, C)
        if widths is None:
            frames = torch.full((sequence.shape[1],), sequence.shape[0], device=sequence.device)
        else:
            frames = self.output_lengths(widths).clamp(min=1, max=sequence.shape[0])
        sequence = self.lstm(sequence, frames)  # (T, B, 2 * hidden)
        # log-probs in fp32 under autocast too: CPU autocast (bf16-mixed) leaves log_softmax
        # in bf16, ~3 significant digits for the CTC loss and the decoders (a no-op in fp32)
        log_probs = self.classifier(sequence).float().log_softmax(-1)  # (T, B, K)
        return log_probs, shortcut

    def extend_classes(self, num_classes: int) -> None:
        """Grow the output layers to ``num_classes``; existing class rows keep their weights."""
        old = self.config.num_classes
        if num_classes < old:
            raise ValueError(f"cannot shrink the output from {old} to {num_classes} classes")
        if num_classes == old:
            return

        def grow(layer: nn.Module, new: nn.Module) -> nn.Module:
            with torch.no_grad():
                new.weight[:old] = layer.weight
                new.bias[:old] = layer.bias
            return new

        self.classifier = grow(self.classifier, nn.Linear(self.classifier.in_features, num_classes))
        if self.shortcut is not None:
            self.shortcut = grow(
                self.shortcut,
                nn.Conv1d(self.shortcut.in_channels, num_classes, kernel_size=3, padding=1),
            )
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
