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

from pipeline.params import AFFINE_SIDE_PADDING, AugmentParams

PAPER = 255  # fill for pixels that geometric transforms pull in from outside the image

Transform = Callable[[torch.Tensor], torch.Tensor]


def morphology(image: torch.Tensor, kernel: int, thicker: bool) -> torch.Tensor:
    """(1, H, W) uint8, dark ink -> the same size, pen strokes thicker (dilated ink) or
    thinner (eroded) by ``kernel - 1`` px."""
    before, after = (kernel - 1) // 2, kernel // 2
    padded = F.pad(image[None].float(), (before, after, before, after), mode="replicate")
    if thicker:
        pooled = -F.max_pool2d(-padded, kernel, stride=1)  # darkest = thicker dark ink
    else:
        pooled = F.max_pool2d(padded, kernel, stride=1)  # brightest = thinner dark ink
    return pooled[0].to(image.dtype)


class RandomMorphology(torch.nn.Module):
    """Erode or dilate the ink (one or the other, 50/50): thinner or thicker pen strokes."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (1, H, W) uint8
        return morphology(image, self.kernel, thicker=bool(torch.rand(()) < 0.5))


class RandomElastic(torch.nn.Module):
    """Elastic warp from a coarse random displacement grid (one node every ``sigma`` px, up
    to ``alpha`` px), upsampled smoothly. Same look as torchvision's ElasticTransform, which
    blurs a full-size noise field and cost ~8 ms per line here, most of the loader's time."""

    def __init__(self, alpha: float, sigma: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.sigma = sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (1, H, W) uint8
        height, width = image.shape[-2:]
        coarse = (max(2, round(height / self.sigma) + 1), max(2, round(width / self.sigma) + 1))
        shift = (torch.rand(1, 2, *coarse) * 2 - 1) * self.alpha  # (1, 2, h, w) px
        shift = F.interpolate(shift, size=(height, width), mode="bicubic", align_corners=True)
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        # grid_sample wants (x, y) in [-1, 1]
        grid_x = (xs + shift[0, 0]) * 2 / max(width - 1, 1) - 1
        grid_y = (ys + shift[0, 1]) * 2 / max(height - 1, 1) - 1
        grid = torch.stack([grid_x, grid_y], dim=-1)[None]  # (1, H, W, 2)
        ink = (PAPER - image.float())[None]  # outside the image reads as 0 ink: paper
        warped = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return (PAPER - warped[0]).round().clamp(0, 255).to(image.dtype)


class RandomWidthStretch(torch.nn.Module):
    """Stretch or squeeze the ink horizontally by a factor in ``[1 - amount, 1 + amount]``:
    hands differ in how wide they write. A squeezed line keeps its width, paper filling the
    right, so it never has fewer CTC frames than the feasibility check counted."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.amount = amount

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (1, H, W) uint8
        height, width = image.shape[-2:]
        factor = 1.0 + (float(torch.rand(())) * 2 - 1) * self.amount
        stretched = max(1, round(width * factor))
        ink = (PAPER - image.float())[None]  # (1, 1, H, W)
        ink = F.interpolate(ink, size=(height, stretched), mode="bilinear", antialias=True)
        ink = F.pad(ink, (0, max(0, width - stretched)))
        return (PAPER - ink[0]).round().clamp(0, 255).to(image.dtype)


class RandomZoom(torch.nn.Module):
    """Enlarge the line by a factor in ``[1, 1 + amount]`` and keep a random band of its
    original height: a tighter crop, larger writing, ascenders or descenders cut. Real
    crops differ in how much of their height the writing takes; affine's scale only
    shrinks. The line grows wider with the ink, so no letter is cut at its ends."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.amount = amount

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (1, H, W) uint8
        height, width = image.shape[-2:]
        factor = 1.0 + float(torch.rand(())) * self.amount
        size = (max(height, round(height * factor)), max(1, round(width * factor)))
        ink = (PAPER - image.float())[None]  # (1, 1, H, W)
        ink = F.interpolate(ink, size=size, mode="bilinear", antialias=True)
        top = int(torch.randint(0, size[0] - height + 1, ()))
        return (PAPER - ink[0, :, top : top + height]).round().clamp(0, 255).to(image.dtype)


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
    if params.stretch:
        steps.append(("stretch", RandomWidthStretch(params.stretch_amount)))
    if params.zoom:
        steps.append(("zoom", RandomZoom(params.zoom_amount)))
    if params.affine:
        steps.append(
            (
                "affine",
                v2.Compose(
                    [
                        PadSides(AFFINE_SIDE_PADDING),
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
        steps.append(("elastic", RandomElastic(params.elastic_alpha, params.elastic_sigma)))
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
