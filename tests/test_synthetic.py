import dataclasses
import hashlib

import numpy as np
import pytest

from pipeline import synthetic
from pipeline.lines import read_split
from pipeline.pull import pull


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_same_seed_gives_identical_files(tmp_path, tiny_params):
    pull(tiny_params, tmp_path / "a", tmp_path / "a.json")
    synthetic.load_font.cache_clear()  # nothing carried over in memory between the runs
    pull(tiny_params, tmp_path / "b", tmp_path / "b.json")
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_other_seed_gives_other_lines(tmp_path, tiny_params):
    pull(tiny_params, tmp_path / "a", tmp_path / "a.json")
    pull(
        dataclasses.replace(tiny_params, seed=tiny_params.seed + 1),
        tmp_path / "b",
        tmp_path / "b.json",
    )
    a = read_split(tmp_path / "a" / "train.parquet").column("text").to_pylist()
    b = read_split(tmp_path / "b" / "train.parquet").column("text").to_pylist()
    assert a != b


def test_a_line_does_not_depend_on_how_many_are_asked_for(tiny_params):
    texts = ["same text for both"]
    one = next(synthetic.generate_split(tiny_params.synthetic, 5, "train", texts))
    more = list(synthetic.generate_split(tiny_params.synthetic, 5, "train", texts * 3))
    assert one.image == more[0].image and one.writer == more[0].writer


def test_test_fonts_are_held_out(tmp_path, tiny_params):
    params = dataclasses.replace(
        tiny_params,
        synthetic=dataclasses.replace(tiny_params.synthetic, train_lines=40, test_lines=12),
    )
    pull(params, tmp_path / "lines", tmp_path / "m.json")
    writers = {
        split: set(read_split(tmp_path / "lines" / f"{split}.parquet").column("writer").to_pylist())
        for split in ("train", "validation", "test")
    }
    assert writers["test"] <= set(params.synthetic.test_fonts) and writers["test"]
    assert (writers["train"] | writers["validation"]) <= set(params.synthetic.train_fonts)
    assert not writers["test"] & (writers["train"] | writers["validation"])
    assert len(writers["train"]) > 1  # several hands in training


def test_split_texts_are_disjoint_and_in_the_iam_charset(tiny_params):
    texts = synthetic.split_texts(tiny_params.synthetic, tiny_params.seed)
    sets = {split: set(lines) for split, lines in texts.items()}
    assert not sets["train"] & sets["validation"] and not sets["train"] & sets["test"]
    for lines in texts.values():
        for line in lines:
            assert set(line) <= set(synthetic.IAM_CHARSET)
            assert tiny_params.synthetic.min_chars <= len(line) <= tiny_params.synthetic.max_chars
            assert line == line.strip() and "  " not in line


def test_asking_for_more_lines_than_the_corpus_has_is_a_clear_error(tiny_params):
    params = dataclasses.replace(tiny_params.synthetic, train_lines=10_000_000)
    with pytest.raises(synthetic.SyntheticError, match="lower synthetic"):
        synthetic.split_texts(params, 1)


def test_every_listed_font_draws_the_whole_charset(tiny_params):
    for font in tiny_params.synthetic.train_fonts + tiny_params.synthetic.test_fonts:
        assert synthetic.load_font(font).extent_per_px > 0


def test_unknown_font_is_a_clear_error():
    with pytest.raises(
        synthetic.SyntheticError, match=r"'no-such-font'.*installed fontpkg families: .*kalam"
    ):
        synthetic.load_font("no-such-font")


def test_rendered_line_has_dark_ink_on_light_paper(tiny_params):
    image = synthetic.render_line(
        "Hello world", "kalam", tiny_params.synthetic, np.random.default_rng(0)
    )
    pixels = np.asarray(image)
    most = round(
        tiny_params.synthetic.render_height * (1 + 2 * tiny_params.synthetic.vertical_margin_max)
    )
    assert image.mode == "L" and tiny_params.synthetic.render_height <= image.height <= most
    assert pixels.min() <= tiny_params.synthetic.ink_max + 30
    assert np.median(pixels) >= tiny_params.synthetic.paper_min - 30
    assert image.width > 2 * tiny_params.synthetic.render_height  # a line, not a blob


def test_neighbouring_lines_show_at_the_edges(tiny_params):
    """With the line itself held still (no drift, slant or warp), the band above and below
    it is paper, unless the lines above and below are drawn: their descenders and ascenders
    come in, as on a line cut from a page."""

    def inked_edges(seed: int, **look) -> int:
        params = dataclasses.replace(
            tiny_params.synthetic,
            vertical_margin_max=0.0,
            paper_texture=0.0,
            noise_std=0.0,
            baseline_drift=0.0,
            slant_max=0.0,
            elastic_alpha=0.0,
            ruling_probability=0.0,
            **look,
        )
        image = synthetic.render_line("Hello world", "kalam", params, np.random.default_rng(seed))
        pixels = np.asarray(image).astype(int)
        band = round(params.render_height * 0.1)  # the text fills the middle 75 %
        paper = int(np.median(pixels))
        return int((pixels[:band] < paper - 60).any()) + int((pixels[-band:] < paper - 60).any())

    seeds = range(6)
    assert sum(inked_edges(seed, neighbour_probability=0.0) for seed in seeds) == 0
    assert sum(inked_edges(seed, neighbour_probability=1.0) for seed in seeds) >= 8  # of 12
