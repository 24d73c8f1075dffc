"""Training-time augmentation, built from the ``augment`` params.

Works on one stored line as a ``(1, H, W)`` uint8 tensor, dark ink on light paper (the
parquet orientation), and returns the same. The ``preview`` stage draws with exactly these
transforms, so what you see is what training gets.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from pipeline.params import AugmentParams

PAPER = 255  # fill for pixels that geometric transforms pull in from outside the image

Transform = Callable[[torch.Tensor], torch.Tensor]


class RandomMorphology(torch.nn.Module):
    """Erode or dilate the ink (one or the other, 50/50): thinner or thicker pen strokes."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (1, H, W) uint8
        before, after = (self.kernel - 1) // 2, self.kernel // 2
        padded = F.pad(image[None].float(), (before, after, before, after), mode="replicate")
        pooled = F.max_pool2d(padded, self.kernel, stride=1)  # brightest = thinner dark ink
        if torch.rand(()) < 0.5:
            pooled = -F.max_pool2d(-padded, self.kernel, stride=1)  # darkest = thicker ink
        return pooled[0].to(image.dtype)


class PadSides(torch.nn.Module):
    """Add paper left and right (a fraction of the height), so slant and rotation move ink
    into blank margin rather than off the image: a cut-off letter would break the label."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (1, H, W)
        pad = round(image.shape[-2] * self.fraction)
        return F.pad(image, (pad, pad), value=PAPER)


def transform_steps(params: AugmentParams) -> list[tuple[str, Transform]]:
    """The enabled transforms, by name, each applied always (callers add the probability)."""
    steps: list[tuple[str, Transform]] = []
    if params.affine:
        steps.append(
            (
                "affine",
                v2.Compose(
                    [
                        PadSides(0.5),
                        v2.RandomAffine(
                            degrees=params.affine_degrees,
                            shear=(-params.affine_shear, params.affine_shear),  # x-shear: slant
                            # shrink only: zooming in would cut ascenders and descenders
                            scale=(1.0 - params.affine_scale, 1.0),
                            fill=PAPER,
                        ),
                    ]
                ),
            )
        )
    if params.perspective:
        steps.append(
            ("perspective", v2.RandomPerspective(params.perspective_distortion, p=1.0, fill=PAPER))
        )
    if params.elastic:
        steps.append(
            ("elastic", v2.ElasticTransform(params.elastic_alpha, params.elastic_sigma, fill=PAPER))
        )
    if params.morphology:
        steps.append(("morphology", RandomMorphology(params.morphology_kernel)))
    if params.brightness_contrast:
        steps.append(
            (
                "brightness_contrast",
                v2.ColorJitter(brightness=params.brightness, contrast=params.contrast),
            )
        )
    return steps


def build_augmentation(params: AugmentParams) -> Transform | None:
    """The training augmentation, or None when ``augment.enabled`` is false or nothing is on."""
    steps = transform_steps(params)
    if not params.enabled or not steps:
        return None
    return v2.Compose([v2.RandomApply([step], p=params.probability) for _, step in steps])
