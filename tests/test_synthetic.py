import dataclasses
import hashlib

import numpy as np
import pytest
from PIL import Image

from pipeline import synthetic
from pipeline.lines import read_split
from pipeline.params import parse_params
from pipeline.pull import pull
from tests.conftest import project_params_dict


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_same_seed_gives_identical_files(tmp_path, tiny_params):
    pull(tiny_params, tmp_path / "a", tmp_path / "a.json")
    # nothing carried over in memory between the runs
    for cached in (synthetic.load_font, synthetic._find_font, synthetic._truetype):
        cached.cache_clear()
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


def test_the_default_splits_share_no_text():
    # the corpus repeats some lines: kept once, none can be read in training and tested too
    params = parse_params(project_params_dict(), "params.yaml")
    texts = synthetic.split_texts(params.synthetic, params.seed)
    train = set(texts["train"])
    assert len(train) == len(texts["train"]) == params.synthetic.train_lines
    assert not train & set(texts["validation"]) and not train & set(texts["test"])
    assert not set(texts["validation"]) & set(texts["test"])


def test_french_fraction_puts_that_share_of_french_lines_in_every_split(tiny_params):
    params = dataclasses.replace(
        tiny_params.synthetic, train_lines=200, validation_lines=40, test_lines=40
    )
    english = set(synthetic.corpus_lines(params.min_chars, params.max_chars, 5))
    assert english
    texts = synthetic.split_texts(dataclasses.replace(params, french_fraction=0.25), 5)
    french = {split: [t for t in lines if t not in english] for split, lines in texts.items()}
    assert {split: len(lines) for split, lines in texts.items()} == {
        "train": 200,
        "validation": 40,
        "test": 40,
    }
    assert {split: len(lines) for split, lines in french.items()} == {
        "train": 50,
        "validation": 10,
        "test": 10,
    }
    # spread through the split, not stacked at its end
    assert any(t in french["train"] for t in texts["train"][:100])
    sets = {split: set(lines) for split, lines in french.items()}
    assert not sets["train"] & sets["validation"] and not sets["train"] & sets["test"]
    all_french = [t for lines in french.values() for t in lines]
    assert set("".join(all_french)) <= set(synthetic.IAM_CHARSET + synthetic.FRENCH_CHARACTERS)
    assert {"é", "è", "’"} <= set("".join(all_french))  # the English corpus never shows them
    for line in all_french:
        assert params.min_chars <= len(line) <= params.max_chars
    # the English lines are the first of those french_fraction 0 gives
    alone = synthetic.split_texts(params, 5)
    assert sorted(t for t in texts["train"] if t in english) == sorted(alone["train"][:150])
    assert texts == synthetic.split_texts(dataclasses.replace(params, french_fraction=0.25), 5)


def test_french_words_are_seeded():
    assert synthetic.french_words(300, 1) == synthetic.french_words(300, 1)
    assert synthetic.french_words(300, 1) != synthetic.french_words(300, 2)
    assert len(synthetic.french_words(300, 1)) == 300


def test_a_font_without_a_glyph_the_text_needs_is_a_clear_error(tiny_params):
    with pytest.raises(synthetic.SyntheticError, match=r"'kalam'.*no glyph for '\u4e00'"):
        synthetic.load_font("kalam", synthetic.IAM_CHARSET + "\u4e00")
    with pytest.raises(synthetic.SyntheticError, match=r"no glyph for '\u4e00'"):
        next(synthetic.generate_split(tiny_params.synthetic, 1, "train", ["ab \u4e00"]))


def test_asking_for_more_lines_than_the_corpus_has_is_a_clear_error(tiny_params):
    params = dataclasses.replace(tiny_params.synthetic, train_lines=10_000_000)
    with pytest.raises(synthetic.SyntheticError, match="lower synthetic"):
        synthetic.split_texts(params, 1)


def test_every_listed_font_draws_the_whole_charset_and_the_french_letters(tiny_params):
    for font in tiny_params.synthetic.train_fonts + tiny_params.synthetic.test_fonts:
        characters = synthetic.IAM_CHARSET + synthetic.FRENCH_CHARACTERS
        assert synthetic.load_font(font, characters).extent_per_px > 0


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


def _held_still(params, **changes):
    """Synthetic params with no margins, paper texture, noise, slant, warp or ruling: the
    line's own ink alone, then ``changes``."""
    still = dict(
        vertical_margin_max=0.0,
        paper_texture=0.0,
        noise_std=0.0,
        slant_max=0.0,
        elastic_alpha=0.0,
        ruling_probability=0.0,
    )
    return dataclasses.replace(params, **{**still, **changes})


def test_neighbouring_lines_show_at_the_edges(tiny_params):
    """With the line itself held still (no drift, slant or warp), the band above and below
    it is paper, unless the lines above and below are drawn: their descenders and ascenders
    come in, as on a line cut from a page."""

    def inked_edges(seed: int, **look) -> int:
        params = _held_still(tiny_params.synthetic, baseline_drift=0.0, **look)
        image = synthetic.render_line("Hello world", "kalam", params, np.random.default_rng(seed))
        pixels = np.asarray(image).astype(int)
        band = round(params.render_height * 0.1)  # the text fills the middle 75 %
        paper = int(np.median(pixels))
        return int((pixels[:band] < paper - 60).any()) + int((pixels[-band:] < paper - 60).any())

    seeds = range(6)
    assert sum(inked_edges(seed, neighbour_probability=0.0) for seed in seeds) == 0
    assert sum(inked_edges(seed, neighbour_probability=1.0) for seed in seeds) >= 8  # of 12


@pytest.mark.parametrize(
    ("font", "apart", "joined"),
    # printed letters: 7 of them and two i dots; joined: the word and its dots. A script
    # font joins its letters itself: nothing to add.
    [("kalam", 9, 3), ("delius", 9, 3), ("indie-flower", 9, 3), ("yellowtail", 3, 3)],
)
def test_join_letters_connects_each_letter_of_a_word_to_the_next(tiny_params, font, apart, joined):
    from scipy import ndimage

    def pieces(join_letters: float) -> int:
        params = _held_still(
            tiny_params.synthetic,
            join_letters=join_letters,
            stroke_width_max=0,
            neighbour_probability=0.0,
        )
        image = synthetic.render_line("minimum", font, params, np.random.default_rng(1))
        pixels = np.asarray(image, dtype=int)
        return ndimage.label(pixels < (pixels.max() + pixels.min()) / 2)[1]

    assert (pieces(0.0), pieces(1.0)) == (apart, joined)


def _jitter_only(tiny_params, **jitter):
    none = dict(glyph_size_jitter=0.0, glyph_slant_jitter=0.0, glyph_baseline_jitter=0.0)
    return dataclasses.replace(tiny_params.synthetic, **{**none, **jitter})


def _ink_rows(image: np.ndarray) -> np.ndarray:
    """(W,) the ink-weighted mean row of each inked column."""
    inked = image.sum(axis=0) > 0
    rows = np.arange(image.shape[0])[:, None]
    return (image * rows).sum(axis=0)[inked] / image.sum(axis=0)[inked]


def _bar(row: int, first: int = 20, last: int = 380) -> Image.Image:
    """A 1 px horizontal stroke on a 100 x 400 canvas of ink coverage."""
    pixels = np.zeros((100, 400), dtype=np.uint8)
    pixels[row, first : last + 1] = 255
    return Image.fromarray(pixels, "L")


def test_glyph_jitter_off_changes_nothing_and_draws_nothing(tiny_params):
    rng = np.random.default_rng(0)
    bar = _bar(60)
    assert synthetic._glyph_jitter(bar, 60.0, 40, _jitter_only(tiny_params), rng) is bar
    assert rng.uniform() == np.random.default_rng(0).uniform()  # the stream is untouched


def test_glyph_baseline_jitter_moves_strokes_up_and_down_within_its_bound(tiny_params):
    params = _jitter_only(tiny_params, glyph_baseline_jitter=0.1)  # 4 px at font size 40
    rows = _ink_rows(np.asarray(synthetic._glyph_jitter(_bar(60), 60.0, 40, params, _rng())))
    assert np.abs(rows - 60).max() <= 4 + 1  # + one px of interpolation
    assert rows.max() - rows.min() >= 2  # it does wander, letter by letter


def test_glyph_size_jitter_scales_about_the_baseline_and_keeps_the_line_length(tiny_params):
    params = _jitter_only(tiny_params, glyph_size_jitter=0.2)
    on_baseline = np.asarray(synthetic._glyph_jitter(_bar(60), 60.0, 40, params, _rng()))
    assert np.abs(_ink_rows(on_baseline) - 60).max() < 0.5  # the baseline stays put
    inked = np.flatnonzero(on_baseline.sum(axis=0))
    assert abs(inked[0] - 20) <= 1 and abs(inked[-1] - 380) <= 1  # so do both ends
    above = np.asarray(synthetic._glyph_jitter(_bar(30), 60.0, 40, params, _rng()))
    heights = 60 - _ink_rows(above)  # a stroke 30 px above the baseline: 24 to 36 px
    assert heights.min() >= 30 * 0.8 - 1 and heights.max() <= 30 * 1.2 + 1
    assert heights.max() - heights.min() >= 3


def test_glyph_slant_jitter_leans_each_stroke_by_its_own_amount(tiny_params):
    params = _jitter_only(tiny_params, glyph_slant_jitter=0.2)
    pixels = np.zeros((100, 400), dtype=np.uint8)
    feet = np.arange(60, 360, 40)
    pixels[20:61, feet] = 255  # upright strokes, 40 px tall, standing on the baseline (60)
    warped = np.asarray(synthetic._glyph_jitter(Image.fromarray(pixels), 60.0, 40, params, _rng()))
    leans = []
    for foot in feet:
        window = warped[:, foot - 15 : foot + 16].astype(float)
        columns = np.arange(foot - 15, foot + 16)
        top, bottom = window[21], window[59]
        assert abs((bottom * columns).sum() / bottom.sum() - foot) < 1.0  # the foot stays
        leans.append((top * columns).sum() / top.sum() - foot)
    assert np.abs(leans).max() <= 0.2 * 40 + 1  # the top leans by at most slant x height
    assert np.ptp(leans) >= 2  # and not every stroke by the same amount


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)
