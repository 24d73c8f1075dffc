"""The Recognizer, the one inference loop: known answers from a hand-built network."""

import dataclasses
import io
import math
import random
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.charlm import CharNgram
from pipeline.charset import Charset
from pipeline.errors import PipelineError
from pipeline.recognizer import Reading, Recognizer, joint_choice, per_frame, rescaled
from tests.conftest import png_bytes

LETTERS = "abcdefghij"
SURE = 0.9  # the probability the fake network gives its best class on every frame


class WidthSpeller(torch.nn.Module):
    """Stands in for the CRNN: one frame per 2 px; frame 0 says the letter ``LETTERS[(width
    // 10) % 10]``, every other frame blank, each with probability ``SURE``. Records the
    widths of every batch it is given."""

    def __init__(self, height: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(architecture=SimpleNamespace(height=height))
        self.batches: list[list[int]] = []

    def output_lengths(self, widths: torch.Tensor) -> torch.Tensor:
        return widths // 2

    def forward(self, images: torch.Tensor, widths: torch.Tensor):  # (B, 1, H, W)
        self.batches.append(widths.tolist())
        frames, classes = int(images.shape[-1]) // 2, len(LETTERS) + 1
        other = math.log((1 - SURE) / (classes - 1))
        log_probs = torch.full((frames, len(widths), classes), other)  # (T, B, K)
        log_probs[:, :, 0] = math.log(SURE)  # blank
        for b, width in enumerate(widths.tolist()):
            letter = 1 + (width // 10) % 10
            log_probs[0, b, :] = other
            log_probs[0, b, letter] = math.log(SURE)
        return log_probs, None


def _recognizer(tiny_params, height: int = 32, batch_size: int = 3) -> Recognizer:
    """Each line read once, as stored: the speller's letter depends on the width, which the
    other sizes change (the voter tests below read at several)."""
    evaluate = dataclasses.replace(tiny_params.evaluate, batch_size=batch_size, scales=(1.0,))
    params = dataclasses.replace(tiny_params, evaluate=evaluate)
    return Recognizer(WidthSpeller(height), Charset(tuple(LETTERS)), params, torch.device("cpu"))


def test_readings_come_back_in_input_order_after_width_sorting(tiny_params):
    recognizer = _recognizer(tiny_params)
    widths = [10 * k + 4 for k in range(1, 11)] * 2
    random.Random(0).shuffle(widths)
    lines = [torch.zeros(1, 32, w) for w in widths]
    for decoder in ("greedy", "beam"):
        read = recognizer.read_lines(lines.__getitem__, widths, [decoder])
        expected = [LETTERS[(w // 10) % 10] for w in widths]
        assert [r.text for r in read.by_decoder[decoder]] == expected
        assert [r.frames for r in read.by_decoder[decoder]] == [w // 2 for w in widths]
    # the network saw batches of at most 3 lines, each sorted, in ascending width
    seen = recognizer.network.batches[-7:]
    assert [len(batch) for batch in seen] == [3, 3, 3, 3, 3, 3, 2]
    flat = [w for batch in seen for w in batch]
    assert flat == sorted(widths)


def test_confidence_is_the_geometric_mean_of_the_path_probability(tiny_params):
    recognizer = _recognizer(tiny_params)
    [reading] = recognizer.read_lines(
        lambda i: torch.zeros(1, 32, 64), [64], ["greedy"]
    ).by_decoder["greedy"]
    assert reading.text == LETTERS[6] and reading.frames == 32
    assert reading.score == pytest.approx(32 * math.log(SURE), rel=1e-5)  # the best path
    # P(text) sums every alignment of the one letter: blanks, the letter on frames s..e,
    # blanks; frame 0 gives the letter SURE and the blank `other`, later frames the reverse
    other = (1 - SURE) / len(LETTERS)
    letter = [SURE] + [other] * 31
    blank = [other] + [SURE] * 31
    total = sum(
        math.prod(blank[:s]) * math.prod(letter[s : e + 1]) * math.prod(blank[e + 1 :])
        for s in range(32)
        for e in range(s, 32)
    )
    assert reading.confidence == pytest.approx(total ** (1 / 32), rel=1e-5)
    assert total > SURE**32  # more than the best path alone
    assert per_frame(-2.0, 4) == pytest.approx(math.exp(-0.5))
    assert per_frame(0.0, 0) == 1.0


def test_confidence_is_on_one_scale_for_every_decoder(tiny_params):
    recognizer = _recognizer(tiny_params)
    widths = [64, 90, 110]  # short: no second letter gathers enough alignments to win
    lines = [torch.zeros(1, 32, w) for w in widths]
    read = recognizer.read_lines(lines.__getitem__, widths, ["greedy", "beam"])
    greedy, beam = read.by_decoder["greedy"], read.by_decoder["beam"]
    assert [r.text for r in greedy] == [r.text for r in beam]
    # same text, same confidence, though the decoders score it differently
    assert [r.confidence for r in greedy] == pytest.approx([r.confidence for r in beam])
    assert all(0.0 < r.confidence <= 1.0 for r in greedy + beam)


def test_read_takes_paths_bytes_pil_images_and_arrays_alike(tiny_params, tmp_path):
    recognizer = _recognizer(tiny_params, height=32)
    png = png_bytes(width=150, height=40)  # stored at 32 px high: 120 px wide
    path = tmp_path / "line.png"
    path.write_bytes(png)
    image = Image.open(io.BytesIO(png))
    inputs = [path, str(path), png, image, np.array(image), np.array(image.convert("RGB"))]
    readings = recognizer.read(inputs, decoder="greedy")
    assert [r.text for r in readings] == [LETTERS[2]] * len(inputs)  # 120 px -> "c"


def test_read_names_the_line_it_cannot_read(tiny_params, tmp_path):
    recognizer = _recognizer(tiny_params)
    good = png_bytes(width=150, height=40)
    with pytest.raises(PipelineError, match=r"image 1: undecodable_image"):
        recognizer.read([good, b"not an image"])
    with pytest.raises(PipelineError, match=r"missing\.png: unreadable_file"):
        recognizer.read([tmp_path / "missing.png"])
    with pytest.raises(PipelineError, match=r"image 0: bad_array"):
        recognizer.read([np.zeros((40, 150), dtype=np.float32)])
    with pytest.raises(PipelineError, match=r"no decoder beam_lm \(it needs a character LM"):
        recognizer.read([good], decoder="beam_lm")


def test_rescaled_lines_keep_their_height_and_their_writing_at_the_middle():
    line = torch.zeros(1, 8, 16)
    line[:, 3:5, 4:12] = 1.0  # ink on the two middle rows
    smaller = rescaled(line, 0.5)
    assert smaller.shape == (1, 8, 8)
    assert smaller[:, :2].max() == 0 and smaller[:, -2:].max() == 0  # paper added above, below
    # the two ink rows, halved, stay on the middle rows at half strength
    assert smaller[:, 3:5, 3:5].flatten().tolist() == [0.5] * 4
    larger = rescaled(line, 2.0)
    assert larger.shape == (1, 8, 32)
    # the ink, twice as tall and wide, about the middle: rows 3-4 full, 2 and 5 blurred
    assert larger[:, 3:5, 9:23].min() == 1.0 and larger[:, [2, 5], 9:23].max() == 0.75
    assert larger[:, [0, 1, 6, 7]].max() < 0.3
    assert rescaled(line, 1.0) is line


class OneFrameVoter(torch.nn.Module):
    """Stands in for the CRNN: one frame per line, P(a) and P(b) on it set by the line's
    width (``votes``), the blank all but impossible; so P("a" | line) is exactly P(a)."""

    def __init__(self, height: int, votes: dict[int, float]) -> None:
        super().__init__()
        self.config = SimpleNamespace(architecture=SimpleNamespace(height=height))
        self.votes = votes  # width -> P(a); P(b) = 1 - P(a)

    def output_lengths(self, widths: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(widths)

    def forward(self, images: torch.Tensor, widths: torch.Tensor):  # (B, 1, H, W)
        log_probs = torch.full((1, len(widths), 3), -30.0)  # (T, B, K): blank, a, b
        for b, width in enumerate(widths.tolist()):
            log_probs[0, b, 1] = math.log(self.votes[width])
            log_probs[0, b, 2] = math.log(1 - self.votes[width])
        return log_probs, None


class Prefers(SimpleNamespace):
    """A decoder's prior alone (what ``joint_choice`` asks of it): ``bonus`` for ``text``."""

    def prior(self, text: str) -> float:
        return self.bonus if text == self.text else 0.0


def _voter_recognizer(tiny_params, votes: dict[int, float], scales) -> Recognizer:
    evaluate = dataclasses.replace(tiny_params.evaluate, batch_size=2, scales=scales)
    params = dataclasses.replace(tiny_params, evaluate=evaluate)
    return Recognizer(OneFrameVoter(32, votes), Charset(("a", "b")), params, torch.device("cpu"))


def test_lines_read_at_several_sizes_keep_the_text_all_versions_find_likeliest(
    tiny_params, monkeypatch
):
    """evaluate.scales: every version read by the decoder, and of the texts read the one
    with the largest P(text | version) multiplied over the versions. A 10 px line read at
    1.0 / 1.5 / 2.0 (10, 15, 20 px): P(a) 0.65, 0.65, 0.3. The surest version (P(b) 0.7 at
    20 px) and the majority of none decide: "a" has 0.65 x 0.65 x 0.3 = 0.127 against "b"'s
    0.35 x 0.35 x 0.7 = 0.086. A 12 px line's versions (12, 18, 24 px) all say "b"."""
    votes = {10: 0.65, 15: 0.65, 20: 0.3, 12: 0.2, 18: 0.4, 24: 0.1}
    monkeypatch.setattr("pipeline.recognizer.LINES_PER_CHOICE", 2)  # chunks of 2, 1 lines
    recognizer = _voter_recognizer(tiny_params, votes, (2.0, 1.0, 1.5))
    lines = [torch.zeros(1, 32, width) for width in (10, 12, 10)]
    read = recognizer.read_lines(lambda i: lines[i], [10, 12, 10], ["greedy"])
    readings = read.by_decoder["greedy"]
    assert [(r.text, r.frames) for r in readings] == [("a", 1), ("b", 1), ("a", 1)]
    # confidence: per frame over the three versions' frames; score: the joint log-prob per
    # version (greedy adds no prior)
    assert readings[0].confidence == pytest.approx((0.65 * 0.65 * 0.3) ** (1 / 3), rel=1e-5)
    assert readings[0].score == pytest.approx(math.log(0.65 * 0.65 * 0.3) / 3, rel=1e-5)
    assert readings[1].confidence == pytest.approx((0.8 * 0.6 * 0.9) ** (1 / 3), rel=1e-5)
    # read once, the 10 px line is "a" too, but from its own frame alone
    once = _voter_recognizer(tiny_params, votes, (1.0,))
    alone = once.read_lines(lambda i: lines[i], [10, 12, 10], ["greedy"]).by_decoder["greedy"]
    assert [r.text for r in alone] == ["a", "b", "a"]
    assert [r.confidence for r in alone] == pytest.approx([0.65, 0.8, 0.65], rel=1e-5)
    # the same pass keeps each line as stored, read once, in its order across the chunks
    assert [r.text for r in read.as_stored["greedy"]] == ["a", "b", "a"]
    assert [r.confidence for r in read.as_stored["greedy"]] == pytest.approx(
        [0.65, 0.8, 0.65], rel=1e-5
    )


def test_the_joint_choice_adds_the_decoders_prior_once_per_version():
    """beam_lm's LM term enters the choice as it enters each version's search: once per
    version. Versions of one frame, P(a) 0.65, 0.65, 0.3 (read "a", "a", "b"): a prior of
    0.3 for "b" per version (0.9 over three) outweighs "a"'s lead of log(0.127 / 0.086) =
    0.39; one of 0.1 (0.3 over three) does not."""
    versions = []
    for vote in (0.65, 0.65, 0.3):
        log_probs = torch.tensor([[-30.0, math.log(vote), math.log(1 - vote)]])  # (T, K)
        text = "a" if vote > 0.5 else "b"
        versions.append((Reading(text, max(vote, 1 - vote), 0.0, 1), log_probs))
    charset = Charset(("a", "b"))
    strong = joint_choice(versions, Prefers(text="b", bonus=0.3), charset)
    assert strong.text == "b"
    assert strong.score == pytest.approx((math.log(0.35 * 0.35 * 0.7) + 0.9) / 3, rel=1e-5)
    assert strong.confidence == pytest.approx((0.35 * 0.35 * 0.7) ** (1 / 3), rel=1e-5)
    assert joint_choice(versions, Prefers(text="b", bonus=0.1), charset).text == "a"


class SeededReader(torch.nn.Module):
    """Stands in for the CRNN: one frame per 2 px, each frame's class probabilities drawn
    from a seed set by the line's width (no two classes exactly tied, as in real lines)."""

    def __init__(self, height: int, classes: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(architecture=SimpleNamespace(height=height))
        self.classes = classes

    def output_lengths(self, widths: torch.Tensor) -> torch.Tensor:
        return widths // 2

    def forward(self, images: torch.Tensor, widths: torch.Tensor):  # (B, 1, H, W)
        frames = int(images.shape[-1]) // 2
        log_probs = torch.full((frames, len(widths), self.classes), -30.0)  # (T, B, K)
        for b, width in enumerate(widths.tolist()):
            logits = torch.randn(
                width // 2, self.classes, generator=torch.Generator().manual_seed(width)
            )
            log_probs[: width // 2, b] = (2 * logits).log_softmax(-1)
        return log_probs, None


def test_beam_searches_in_worker_processes_read_what_one_process_reads(tiny_params, monkeypatch):
    """``decode_processes``: each batch's beam searches run in spawned worker processes (each
    with its own copy of the decoders and the LM) while the network reads on. Every reading
    is the one a single process makes, in input order: read once (batches collected while
    others are in flight) and read at several sizes (all sizes submitted before any is
    collected)."""
    monkeypatch.setattr("pipeline.recognizer.BATCHES_IN_FLIGHT_PER_PROCESS", 1)
    evaluate = dataclasses.replace(tiny_params.evaluate, batch_size=3, scales=(1.0, 0.8))
    params = dataclasses.replace(tiny_params, evaluate=evaluate)
    lm = CharNgram.fit(["abc", "cab", "ba", "jig", "head"] * 3, order=3)
    widths = [12 + 5 * k for k in range(20)]
    random.Random(1).shuffle(widths)
    lines = [torch.zeros(1, 32, w) for w in widths]
    decoders = ["greedy", "beam", "beam_lm"]

    def texts_and_scores(readings: dict[str, list[Reading]]) -> dict:
        return {
            name: [(r.text, r.score, r.confidence) for r in read] for name, read in readings.items()
        }

    results = {}
    for processes in (1, 2):
        network = SeededReader(32, len(LETTERS) + 1)
        with Recognizer(
            network, Charset(tuple(LETTERS)), params, torch.device("cpu"), lm, processes
        ) as recognizer:
            once, _ = recognizer.read_version(
                lines.__getitem__, widths, decoders, defaultdict(float), None, keep=False
            )()
            sizes = recognizer.read_lines(lines.__getitem__, widths, decoders)
            assert all(sizes.seconds[name] > 0 for name in decoders)
        results[processes] = [
            texts_and_scores(once),
            texts_and_scores(sizes.by_decoder),
            texts_and_scores(sizes.as_stored),
        ]
    for pooled, alone in zip(results[2], results[1], strict=True):
        for name in decoders:
            assert [t for t, _, _ in pooled[name]] == [t for t, _, _ in alone[name]]
            assert [s for _, s, _ in pooled[name]] == pytest.approx([s for _, s, _ in alone[name]])
            assert [c for _, _, c in pooled[name]] == pytest.approx([c for _, _, c in alone[name]])
    # the workers' beam_lm used the LM: it read other texts than beam on some lines
    once = results[2][0]
    assert [t for t, _, _ in once["beam_lm"]] != [t for t, _, _ in once["beam"]]
