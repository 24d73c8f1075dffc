"""The embedded default dataset: handwriting-style text lines rendered offline.

Text comes from English prose shipped with Python (``pydoc_data.topics``), cut into
line-length chunks and kept to IAM's character set, and, for ``synthetic.french_fraction`` of
each split's lines, from French: the common words (with accents, elided articles, names,
places and dates) that Faker's ``fr_FR`` providers ship. Each line is drawn with one of the
openly licensed handwriting fonts installed by the ``fontpkg-*`` packages, with writer-like
variation (size, slant and baseline per line, word and letter, word spacing, stroke width,
a mild elastic warp, ink and paper tones, noise). Every line draws its randomness from
``(seed, split, index)`` alone, so output is identical across runs and independent of how
many lines are asked for.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from pipeline.errors import PipelineError
from pipeline.lines import SourceRow
from pipeline.params import SyntheticParams

# The character set of the IAM database lines (79 characters).
IAM_CHARSET = " !\"#&'()*+,-./0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SPLIT_INDEX = {"train": 0, "validation": 1, "test": 2}

# Prose-like tokens only: a word, optionally wrapped in quotes/brackets and followed by
# punctuation. Code fragments of the Python docs ("x[i]", "__init__") fail this pattern.
_WORD = re.compile(r"""^["'(#]?[A-Za-z0-9&][A-Za-z0-9'&/+*-]*[.,;:!?"')]*$""")


class SyntheticError(PipelineError, ValueError):
    pass


@cache
def corpus_words() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    words = []
    for key in sorted(topics):
        for word in topics[key].split():
            if _WORD.match(word) and all(ch in IAM_CHARSET for ch in word):
                words.append(word)
    return tuple(words)


# What French text adds to IAM's characters (Faker's fr_FR words, names and places use no
# others once the few foreign names are left out).
FRENCH_CHARACTERS = "ÀÂÇÈÉÊÎÔàâçèéêëîïôùûüœ’"
_ELIDED = ("l’", "d’", "j’", "n’", "s’", "qu’")  # before a word starting with a vowel or h
_VOWEL_START = re.compile(r"^[aeiouhéèêâîôAEIOUHÉ]")


def french_words(count: int, seed: int) -> list[str]:
    """``count`` French words in sentences: Faker's ``fr_FR`` lorem words (the Eduscol list
    of common French words; MIT licensed), one word in ~10 a first or last name, a place or a
    date, elided articles before vowels, numbers now and then. Seeded: the same words for the
    same seed (Faker's version is pinned)."""
    from faker import Faker

    fake = Faker("fr_FR")
    fake.seed_instance(seed)
    draw = fake.random
    allowed = set(IAM_CHARSET + FRENCH_CHARACTERS)
    words: list[str] = []
    while len(words) < count:
        sentence = fake.sentence(nb_words=draw.randint(6, 14), variable_nb_words=False).split()
        for position, word in enumerate(sentence):
            roll = draw.random()
            if roll < 0.04:
                word = fake.first_name() if draw.random() < 0.5 else fake.last_name()
            elif roll < 0.06:
                word = fake.city()
            elif roll < 0.08:
                day, year = draw.randint(1, 31), draw.randint(1850, 1950)
                word = f"{day} {fake.month_name().lower()} {year}"
            elif roll < 0.10:
                word = str(draw.randint(2, 999))
            elif roll < 0.25 and position > 0 and _VOWEL_START.match(word):
                word = draw.choice(_ELIDED) + word
            if position == len(sentence) - 1 and not word.endswith("."):
                word += "."
            words.extend(w for w in word.split() if set(w) <= allowed)
    return words[:count]


def corpus_lines(
    min_chars: int, max_chars: int, seed: int, words: Iterable[str] | None = None
) -> list[str]:
    """Consecutive words (default: the English corpus) cut into lines of a random target
    length, in corpus order; a line the corpus repeats is kept once (the splits are cut
    from this list, so a repeat could otherwise sit in two)."""
    rng = np.random.default_rng([seed, 99])
    lines: list[str] = []
    current: list[str] = []
    length = 0
    target = int(rng.integers(min_chars, max_chars + 1))
    for word in corpus_words() if words is None else words:
        if len(word) > max_chars:
            continue
        added = len(word) + (1 if current else 0)
        if current and length + added > target:
            if length >= min_chars:
                lines.append(" ".join(current))
            current, length = [], 0
            target = int(rng.integers(min_chars, max_chars + 1))
            added = len(word)
        current.append(word)
        length += added
    return list(dict.fromkeys(lines))


def split_texts(params: SyntheticParams, seed: int) -> dict[str, list[str]]:
    """Texts per split: a seeded shuffle of the corpus lines, cut in three (no text in two
    splits); with ``french_fraction``, that share of each split's
    lines are French lines, cut from one French text and spread through the split by a
    seeded shuffle."""
    sizes = {
        "train": params.train_lines,
        "validation": params.validation_lines,
        "test": params.test_lines,
    }
    french = {split: round(size * params.french_fraction) for split, size in sizes.items()}
    lines = corpus_lines(params.min_chars, params.max_chars, seed)
    wanted = sum(sizes.values()) - sum(french.values())
    if wanted > len(lines):
        raise SyntheticError(
            f"synthetic: asked for {wanted} English lines but the corpus gives "
            f"{len(lines)} distinct lines of {params.min_chars}-{params.max_chars} characters; "
            "lower synthetic.*_lines or widen min_chars/max_chars"
        )
    order = np.random.default_rng([seed, 7]).permutation(len(lines))
    french_lines: Iterator[str] = iter(())
    if sum(french.values()):
        # a line holds at most max_chars // 2 words (one letter and a space each): words
        # enough for every line asked for, even the few too short to keep
        count = (sum(french.values()) + 10) * (params.max_chars // 2)
        french_lines = iter(
            corpus_lines(params.min_chars, params.max_chars, seed, french_words(count, seed))
        )
    texts, start = {}, 0
    for split, size in sizes.items():
        english = size - french[split]
        texts[split] = [lines[i] for i in order[start : start + english]]
        start += english
        if french[split]:
            texts[split] += [next(french_lines) for _ in range(french[split])]
            mixed = np.random.default_rng([seed, 8, SPLIT_INDEX[split]]).permutation(size)
            texts[split] = [texts[split][i] for i in mixed]
    return texts


@dataclass(frozen=True)
class LoadedFont:
    name: str
    path: str
    extent_per_px: float  # (ascent + descent) / font size


@cache
def _find_font(name: str) -> LoadedFont:
    """A fontpkg family's file and metrics; its glyphs are checked by ``load_font``."""
    import fontpkg

    try:
        path = str(fontpkg.path(name, nearest=True))
    except fontpkg.FontpkgError as error:
        installed = ", ".join(sorted(fontpkg.families())) or "none"
        raise SyntheticError(
            f"synthetic font {name!r}: {error} (installed fontpkg families: {installed})"
        ) from None
    ascent, descent = _truetype(path, 100).getmetrics()
    return LoadedFont(name=name, path=path, extent_per_px=(ascent + descent) / 100)


@cache
def load_font(name: str, characters: str = IAM_CHARSET) -> LoadedFont:
    """Resolve a fontpkg family and check it draws every one of ``characters`` (default:
    the IAM charset)."""
    loaded = _find_font(name)
    path = loaded.path
    font = _truetype(path, 100)
    notdef = np.asarray(font.getmask("\U0010fffd"))
    missing = []
    for ch in characters.replace(" ", ""):
        mask = np.asarray(font.getmask(ch))
        if (
            mask.size == 0
            or mask.max() == 0
            or (mask.shape == notdef.shape and (mask == notdef).all())
        ):
            missing.append(ch)
    if missing:
        raise SyntheticError(
            f"synthetic font {name!r} ({path}) has no glyph for {''.join(missing)!r}"
        )
    return loaded


@cache
def _truetype(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _neighbour_text(rng: np.random.Generator, count: int) -> str:
    words = corpus_words()
    return " ".join(words[int(i)] for i in rng.integers(len(words), size=count))


def _paper_texture(shape: tuple[int, int], amount: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth blotches: a coarse random grid (one node per ~12 px) upsampled bilinearly."""
    if amount <= 0:
        return np.zeros(shape, dtype=np.float32)
    coarse = rng.normal(0.0, amount, size=(max(2, shape[0] // 12), max(2, shape[1] // 12)))
    image = Image.fromarray(coarse.astype(np.float32), "F")
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def render_line(
    text: str, font_name: str, params: SyntheticParams, rng: np.random.Generator
) -> Image.Image:
    """One grayscale line image (dark ink on light paper), ``params.render_height`` high plus
    its random vertical margins."""
    loaded = _find_font(font_name)  # its glyphs were checked for the split's texts
    height = params.render_height
    jitter = 1.0 + params.size_jitter * rng.uniform(-1.0, 1.0)
    # Size the font so its ascent+descent fills ~75 % of the canvas: every font reaches a
    # similar x-height, leaving room for baseline drift.
    size = max(8, round(0.75 * height / loaded.extent_per_px * jitter))
    font = _truetype(loaded.path, size)
    ascent, descent = font.getmetrics()
    space = font.getlength(" ")
    stroke = int(rng.integers(0, params.stroke_width_max + 1))
    words = text.split(" ")
    slant = params.slant_max * rng.uniform(-1.0, 1.0)
    margins = [round(height * params.vertical_margin_max * rng.uniform()) for _ in range(2)]
    canvas_height = height + sum(margins)

    margin = int(height * 0.5)
    total = sum(font.getlength(w) for w in words) + space * (1 + params.word_spacing_jitter) * len(
        words
    )
    canvas_width = int(total) + 2 * margin + int(abs(slant) * canvas_height)
    ink = Image.new("L", (canvas_width, canvas_height), 0)  # ink coverage: 0 paper, 255 ink
    draw = ImageDraw.Draw(ink)
    middle = (height - (ascent + descent)) / 2
    top = margins[0] + middle
    # drawn only when on, so that lines rendered without it stay byte-identical
    joined = params.join_letters > 0 and rng.uniform() < params.join_letters
    x, drift = float(margin), 0.0
    for word in words:
        drift = 0.6 * drift + rng.normal(0.0, params.baseline_drift * size)
        drift = float(np.clip(drift, -middle, middle))
        draw.text((x, top + drift), word, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        if joined:
            _join_letters(draw, word, (x, top + drift), loaded.path, size, stroke)
        gap = space * (1.0 + params.word_spacing_jitter * rng.uniform(-1.0, 1.0))
        x += font.getlength(word) + gap
    ink = _glyph_jitter(ink, baseline=top + ascent, font_size=size, params=params, rng=rng)

    # What is not the line (it must not decide the crop): the lines above and below, cut
    # off by the canvas edge, and a ruled line near the baseline, fainter than ink.
    others = Image.new("L", ink.size, 0)
    draw_others = ImageDraw.Draw(others)
    pitch = (ascent + descent) * rng.uniform(0.65, 0.95)  # handwritten lines sit close
    for direction in (-1, 1):
        if rng.uniform() < params.neighbour_probability:
            start = margin + rng.uniform(-0.5, 0.5) * margin
            draw_others.text(
                (start, top + direction * pitch), _neighbour_text(rng, 12), font=font, fill=255
            )
    if rng.uniform() < params.ruling_probability:
        y = top + ascent + rng.uniform(0.0, 0.35) * descent
        draw_others.line(
            (0, y, canvas_width, y + rng.uniform(-2, 2)),
            fill=int(rng.uniform(80, 180)),
            width=int(rng.integers(1, 3)),
        )

    # Slant: shear about the vertical centre so the line stays on the canvas.
    shear = (1.0, slant, -slant * canvas_height / 2, 0.0, 1.0, 0.0)
    coverages = []
    for layer in (ink, others):
        layer = layer.transform(
            layer.size, Image.Transform.AFFINE, shear, resample=Image.Resampling.BILINEAR
        )
        coverage = np.asarray(layer, dtype=np.float32) / 255.0
        coverages.append(_elastic(coverage, params.elastic_alpha, params.elastic_sigma, rng))
    coverage, other_coverage = coverages

    columns = np.flatnonzero(coverage.max(axis=0) > 0.1)
    if columns.size == 0:
        raise SyntheticError(f"font {font_name!r} drew nothing for {text!r}")
    pad = int(rng.integers(2, max(3, height // 8)))
    left, right = max(0, columns[0] - pad), min(coverage.shape[1], columns[-1] + 1 + pad)
    coverage = np.maximum(coverage, other_coverage)[:, left:right]

    ink_level = rng.uniform(params.ink_min, params.ink_max)
    paper_level = rng.uniform(params.paper_min, params.paper_max)
    paper = paper_level + _paper_texture(coverage.shape, params.paper_texture, rng)
    pixels = paper + (ink_level - paper) * coverage
    pixels += rng.normal(0.0, params.noise_std, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "L")


def _drawn(path: str, size: int, letter: str) -> tuple[np.ndarray, int, int]:
    """``letter`` drawn at the origin: its (H, W) ink mask, the baseline's row (the font's
    ascent) and the font's x-height, in px."""
    font = _truetype(path, size)
    ascent, descent = font.getmetrics()
    x_height = ascent - font.getbbox("x")[1]  # the bbox's top is px below the origin
    mask = Image.new("L", (int(font.getbbox(letter)[2]) + 2, ascent + descent), 0)
    ImageDraw.Draw(mask).text((0, 0), letter, font=font, fill=255)
    return np.asarray(mask) > 127, ascent, x_height


@cache
def _letter_ends(
    path: str, size: int, letter: str
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Where a cursive upstroke would enter and leave ``letter`` drawn at the origin: its
    leftmost ink in the top third of the x-height, and its rightmost ink in the bottom third
    (above the baseline), as (x, y) px; None if it has no ink in either (an apostrophe)."""
    inked, baseline, x_height = _drawn(path, size, letter)
    band = max(1, x_height // 3)

    def extreme(first_row: int, rightmost: bool) -> tuple[int, int] | None:
        rows, columns = np.nonzero(inked[first_row : first_row + band])
        if columns.size == 0:
            return None
        x = columns.max() if rightmost else columns.min()
        return int(x), first_row + int(np.median(rows[columns == x]))

    entry = extreme(baseline - x_height, rightmost=False)
    exit_ = extreme(baseline - band, rightmost=True)
    return None if entry is None or exit_ is None else (entry, exit_)


@cache
def _stroke_px(path: str, size: int) -> int:
    """The font's stroke width at this size: the median run of ink across the middle of an
    'n' (its two stems)."""
    inked, baseline, x_height = _drawn(path, size, "n")
    row = inked[baseline - x_height // 2]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
    runs = edges[1::2] - edges[::2]
    return max(1, int(np.median(runs))) if runs.size else 1


def _join_letters(
    draw: ImageDraw.ImageDraw,
    word: str,
    origin: tuple[float, float],
    path: str,
    size: int,
    stroke: int,
) -> None:
    """Connect each letter of ``word`` (drawn at ``origin``) to the next with a curve from
    where its ink leaves low to where the next letter's ink starts, as a cursive hand does.
    Letters that already touch or overlap (cursive fonts) and wide gaps are left alone."""
    font = _truetype(path, size)
    width = max(1.0, 0.6 * _stroke_px(path, size)) + 2 * stroke  # upstrokes: thinner than stems
    x, y = origin
    for i in range(len(word) - 1):
        if not (word[i].isalpha() and word[i + 1].isalpha()):
            continue
        left, right = _letter_ends(path, size, word[i]), _letter_ends(path, size, word[i + 1])
        if left is None or right is None:
            continue
        (exit_x, exit_y), (entry_x, entry_y) = left[1], right[0]
        start = (x + font.getlength(word[:i]) + exit_x, y + exit_y)
        end = (x + font.getlength(word[: i + 1]) + entry_x, y + entry_y)
        if not 1.0 < end[0] - start[0] < 0.5 * size:
            continue
        # a quadratic curve that leaves flat near the baseline, then rises into the next
        control = (start[0] + 0.6 * (end[0] - start[0]), start[1])
        # a round pen moved along it, one dab per px (PIL's wide polylines are ragged
        # on short segments)
        steps = max(2, round(abs(end[0] - start[0]) + abs(end[1] - start[1])))
        t = np.linspace(0.0, 1.0, steps)[:, None]  # (S, 1)
        curve = (1 - t) ** 2 * np.array(start) + 2 * (1 - t) * t * np.array(control)
        curve += t**2 * np.array(end)  # (S, 2)
        radius = width / 2
        for cx, cy in curve:
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)


def _glyph_jitter(
    ink: Image.Image,
    baseline: float,
    font_size: int,
    params: SyntheticParams,
    rng: np.random.Generator,
) -> Image.Image:
    """Size, slant and baseline that change from letter to letter: random values at one node
    per half font size (about a letter's width), interpolated along the line, drive one
    smooth warp of the ink, so joined strokes stay joined. The size changes about the
    baseline and in both directions; the line keeps its length."""
    if not (params.glyph_size_jitter or params.glyph_slant_jitter or params.glyph_baseline_jitter):
        return ink  # no draws either: lines rendered without it stay byte-identical
    coverage = np.asarray(ink, dtype=np.float32)
    height, width = coverage.shape
    nodes = np.arange(0.0, width + font_size / 2, font_size / 2)

    def along_line(amount: float) -> np.ndarray:  # (W,) in [-amount, amount]
        return np.interp(np.arange(width), nodes, amount * rng.uniform(-1, 1, nodes.size))

    scale = 1.0 + along_line(params.glyph_size_jitter)  # (W,) > 0: jitter < 1
    slant = along_line(params.glyph_slant_jitter)  # (W,)
    lift = along_line(params.glyph_baseline_jitter * font_size)  # (W,) px
    # Each output column samples the source 1/scale columns further on: letters widen where
    # scale > 1. Stretched back to span the same columns, so the text keeps its margins.
    source_x = np.concatenate([[0.0], np.cumsum(1.0 / scale[:-1])])
    source_x *= (width - 1) / source_x[-1]
    rows = np.arange(height, dtype=np.float64)[:, None]  # (H, 1)
    from_baseline = rows - baseline - lift  # (H, W)
    coords = np.array(
        [
            baseline + from_baseline / scale,
            source_x + slant * from_baseline,
        ]
    )
    warped = ndimage.map_coordinates(coverage, coords, order=1, mode="constant", cval=0.0)
    return Image.fromarray(warped.round().astype(np.uint8), "L")


def _elastic(image: np.ndarray, alpha: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random displacement (alpha px, smoothness sigma px): wobbly, legible strokes."""
    if alpha <= 0:
        return image
    shape = image.shape
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, shape), sigma, mode="constant")
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, shape), sigma, mode="constant")
    # Normalize so alpha is the largest displacement whatever sigma is.
    scale = alpha / max(np.abs(dy).max(), np.abs(dx).max(), 1e-8)
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    coords = np.array([rows + dy * scale, cols + dx * scale])
    return ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)


def split_fonts(params: SyntheticParams, split: str) -> tuple[str, ...]:
    return params.test_fonts if split == "test" else params.train_fonts


def generate_split(
    params: SyntheticParams, seed: int, split: str, texts: list[str]
) -> Iterator[SourceRow]:
    """Rendered lines as source rows (PNG at render height; ``pull`` normalizes them)."""
    fonts = split_fonts(params, split)
    drawn = IAM_CHARSET + "".join(sorted(set("".join(texts)) - set(IAM_CHARSET)))
    for font in fonts:
        load_font(font, drawn)  # fail on a bad font before drawing anything
    for index, text in enumerate(texts):
        rng = np.random.default_rng([seed, SPLIT_INDEX[split], index])
        font = fonts[int(rng.integers(len(fonts)))]
        buffer = io.BytesIO()
        render_line(text, font, params, rng).save(buffer, format="PNG", compress_level=1)
        yield SourceRow(
            name=f"{split} line {index}",
            id=f"{split}-{index:06d}",
            image=buffer.getvalue(),
            text=text,
            writer=font,  # the font is the "hand" that wrote the line
        )
