import dataclasses

import torch
from PIL import Image

from pipeline.augment import build_augmentation, transform_steps
from pipeline.preview import preview
from pipeline.pull import pull


def test_preview_writes_one_grid_per_transform_and_is_deterministic(tmp_path, tiny_params):
    pull(tiny_params, tmp_path / "lines", tmp_path / "m.json")
    written = preview(tiny_params, tmp_path / "lines" / "train.parquet", tmp_path / "preview")
    names = sorted(p.name for p in written)
    assert names == sorted(
        ["augment.png"] + [f"{name}.png" for name, _ in transform_steps(tiny_params.augment)]
    )
    grid = Image.open(written[0])
    assert grid.width > 200 and grid.height > 2 * 64  # two lines shown at 64 px
    first = {p.name: p.read_bytes() for p in written}
    preview(tiny_params, tmp_path / "lines" / "train.parquet", tmp_path / "preview")
    assert {p.name: p.read_bytes() for p in written} == first


def test_each_transform_can_be_switched_off(tiny_params):
    all_on = [name for name, _ in transform_steps(tiny_params.augment)]
    assert all_on == ["affine", "perspective", "elastic", "morphology", "brightness_contrast"]
    off = dataclasses.replace(tiny_params.augment, elastic=False, morphology=False)
    assert [name for name, _ in transform_steps(off)] == [
        "affine",
        "perspective",
        "brightness_contrast",
    ]
    assert build_augmentation(dataclasses.replace(tiny_params.augment, enabled=False)) is None
    stretch = dataclasses.replace(tiny_params.augment, stretch=True)
    assert [name for name, _ in transform_steps(stretch)] == ["stretch", *all_on]
    zoom = dataclasses.replace(stretch, zoom=True)
    assert [name for name, _ in transform_steps(zoom)] == ["stretch", "zoom", *all_on]


def test_width_stretch_scales_the_ink_and_never_narrows_the_line():
    from pipeline.augment import RandomWidthStretch

    image = torch.full((1, 32, 160), 255, dtype=torch.uint8)
    image[:, 8:24, 20:140] = 0  # ink from x=20 to 139: 120 px
    torch.manual_seed(0)
    factors = []
    for _ in range(40):
        out = RandomWidthStretch(0.25)(image)
        inked = (out[0] < 128).any(dim=0).nonzero()[:, 0]
        factor = (int(inked[-1]) + 1) / 140  # the ink's right edge moves from 140
        factors.append(factor)
        assert 0.75 - 0.02 <= factor <= 1.25 + 0.02
        assert out.shape[-2] == 32 and out.shape[-1] >= 160  # never narrower: paper fills
        assert abs(out.shape[-1] - max(160, 160 * factor)) <= 2  # wider when stretched
        assert out[0, :8].min() > 250 and out[0, 24:].min() > 250  # no vertical change
        assert abs(int(inked[0]) - 20 * factor) <= 1.5  # the left margin scales too
    assert min(factors) < 0.85 and max(factors) > 1.15  # both ways, across the range


def test_zoom_enlarges_the_ink_keeps_the_height_and_widens_the_line():
    from pipeline.augment import RandomZoom

    image = torch.full((1, 32, 160), 255, dtype=torch.uint8)
    image[:, 12:20, 20:140] = 0  # ink rows 12-19 (8 px), x=20 to 139 (120 px)
    torch.manual_seed(0)
    factors, tops = [], []
    for _ in range(40):
        out = RandomZoom(0.5)(image)
        assert out.shape[-2] == 32 and out.dtype == torch.uint8  # height kept
        factor = out.shape[-1] / 160  # the line widens with its ink: nothing cut at the ends
        assert 1.0 - 0.01 <= factor <= 1.5 + 0.01
        inked_columns = (out[0] < 128).any(dim=0).nonzero()[:, 0]
        assert abs((int(inked_columns[-1]) + 1 - int(inked_columns[0])) - 120 * factor) <= 2
        inked_rows = (out[0] < 128).any(dim=1).nonzero()[:, 0]
        assert abs(len(inked_rows) - 8 * factor) <= 2  # taller ink in the same height
        factors.append(factor)
        tops.append(int(inked_rows[0]))
    assert min(factors) < 1.1 and max(factors) > 1.4  # across the range
    assert len(set(tops)) > 3  # the band kept moves: sometimes the top cut, sometimes not


def test_augmentation_keeps_type_and_paper_and_changes_pixels(tiny_params):
    image = torch.full((1, 32, 160), 240, dtype=torch.uint8)
    image[:, 10:22, 20:140] = 20  # a dark bar of "ink"
    always = dataclasses.replace(tiny_params.augment, probability=1.0)
    torch.manual_seed(0)
    out = build_augmentation(always)(image)
    assert out.dtype == torch.uint8 and out.shape[0] == 1 and out.shape[1] == 32
    assert out.shape[2] >= 160  # sides are padded with paper, never cropped
    assert not torch.equal(out[:, :, :160], image)
    assert out.float().mean() > 128  # still mostly paper


def test_morphology_thickens_or_thins_a_stroke_by_one_pixel():
    from pipeline.augment import RandomMorphology, morphology

    image = torch.full((1, 8, 12), 255, dtype=torch.uint8)
    image[:, 2:6, 5:7] = 0  # a stroke 2 px wide
    thicker = morphology(image, 2, thicker=True)
    thinner = morphology(image, 2, thicker=False)
    assert thicker.shape == thinner.shape == image.shape and thicker.dtype == torch.uint8
    # a 2 px kernel grows the ink one pixel up and left, and shrinks it from there
    assert (thicker[0] == 0).sum(dim=1).tolist() == [0, 3, 3, 3, 3, 3, 0, 0]
    assert (thinner[0] == 0).sum(dim=1).tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    torch.manual_seed(0)
    drawn = {RandomMorphology(2)(image).sum().item() for _ in range(20)}
    assert drawn == {thicker.sum().item(), thinner.sum().item()}  # one or the other
