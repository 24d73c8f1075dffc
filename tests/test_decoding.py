"""Decoders on hand-built log-probs with known answers."""

import json
import math
import pickle

import pytest
import torch
from torchmetrics.text import CharErrorRate, WordErrorRate

from pipeline.charlm import BOS, CharNgram, LanguageModelError, words_of
from pipeline.charset import Charset
from pipeline.decoding import (
    AUTO_PROCESSES_MAX,
    BeamDecoder,
    GreedyDecoder,
    build_decoders,
    resolve_processes,
)
from pipeline.greedy import greedy_ids

CHARSET = Charset(tuple(" ab"))  # ids: blank 0, " " 1, "a" 2, "b" 3


def emissions(*frames: str, peak: float = 0.9) -> torch.Tensor:
    """(T, 1, K) log-probs; each frame puts ``peak`` on one symbol ("-" is the blank)."""
    symbols = ["-", " ", "a", "b"]
    rows = []
    for frame in frames:
        row = [(1 - peak) / (len(symbols) - 1)] * len(symbols)
        row[symbols.index(frame)] = peak
        rows.append(row)
    return torch.tensor(rows).log()[:, None, :]


def decode_both(log_probs, length=None, width=10):
    lengths = torch.tensor([length or log_probs.shape[0]] * log_probs.shape[1])
    greedy = GreedyDecoder(CHARSET)(log_probs, lengths)
    beam = BeamDecoder(CHARSET, width, 0, 100.0)(log_probs, lengths)
    return [h.text for h in greedy], [h.text for h in beam]


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        (("a", "-", "a"), "aa"),  # repeats separated by a blank stay two letters
        (("a", "a", "a", "b", "b"), "ab"),  # repeats without a blank merge
        (("-", "-", "-"), ""),  # all blank
        (("a", " ", "b", "-", "b", " ", " "), "a bb "),
        (("b",), "b"),
    ],
)
def test_known_answers(frames, expected):
    greedy, beam = decode_both(emissions(*frames))
    assert greedy == [expected] and beam == [expected]


def test_lengths_cut_the_padding():
    log_probs = emissions("a", "b", "b", "a", "a")
    greedy, beam = decode_both(log_probs, length=3)
    assert greedy == ["ab"] and beam == ["ab"]


def test_greedy_is_vectorized_over_a_batch_and_scores_the_path():
    batch = torch.cat([emissions("a", "-", "a"), emissions("b", "b", "-")], dim=1)  # (3, 2, 4)
    ids, scores = greedy_ids(batch, torch.tensor([3, 2]))
    assert ids == [[2, 2], [3]]
    assert scores[0].item() == pytest.approx(3 * math.log(0.9), abs=1e-5)
    assert scores[1].item() == pytest.approx(2 * math.log(0.9), abs=1e-5)


def test_beam_width_one_equals_greedy_on_random_emissions():
    torch.manual_seed(0)
    log_probs = torch.randn(40, 8, CHARSET.num_classes).mul(3).log_softmax(-1)  # (T, B, K)
    lengths = torch.tensor([40, 35, 30, 25, 20, 15, 10, 5])
    greedy = [h.text for h in GreedyDecoder(CHARSET)(log_probs, lengths)]
    beam = [h.text for h in BeamDecoder(CHARSET, 1, 0, 1000.0)(log_probs, lengths)]
    assert beam == greedy


def test_beam_beats_greedy_by_merging_prefixes():
    # Two frames, p(blank) = 0.6, p(a) = 0.4 each. Best path: blank blank -> "" (0.36).
    # But "a" is reached by a-a, a-blank and blank-a: 0.16 + 0.24 + 0.24 = 0.64.
    charset = Charset(("a",))
    log_probs = torch.tensor([[0.6, 0.4], [0.6, 0.4]]).log()[:, None, :]
    lengths = torch.tensor([2])
    assert GreedyDecoder(charset)(log_probs, lengths)[0].text == ""
    beam = BeamDecoder(charset, 5, 0, 100.0)(log_probs, lengths)[0]
    assert beam.text == "a"
    assert beam.score == pytest.approx(math.log(0.64), abs=1e-5)


def test_nbest_lists_every_text_best_first_and_the_call_keeps_the_first(tiny_params):
    # The two frames above hold exactly two texts: "a" (0.64) and "" (0.36); "aa" needs a
    # blank between its letters, three frames. A depth of 3 finds those two only.
    charset = Charset(("a",))
    log_probs = torch.tensor([[0.6, 0.4], [0.6, 0.4]]).log()[:, None, :]  # (T, B, K)
    lengths = torch.tensor([2])
    decoder = BeamDecoder(charset, 5, 0, 100.0, depth=3)
    (texts,) = decoder.nbest(log_probs, lengths)
    assert [h.text for h in texts] == ["a", ""]
    assert [h.score for h in texts] == pytest.approx([math.log(0.64), math.log(0.36)], abs=1e-5)
    assert decoder(log_probs, lengths) == texts[:1]
    deep = build_decoders(charset, tiny_params.evaluate, depth=3)
    assert deep["beam"].depth == 3


def test_space_is_an_ordinary_character_for_the_beam():
    greedy, beam = decode_both(emissions(" ", "a", " ", " ", "-", " "))
    assert greedy == beam == [" a  "]


def test_build_decoders_reads_evaluate_params(tiny_params):
    decoders = build_decoders(CHARSET, tiny_params.evaluate)
    assert set(decoders) == {"greedy", "beam"}
    assert decoders["beam"].beam_width == tiny_params.evaluate.beam_width


def test_cer_and_wer_against_hand_computed_values():
    truths = ["the cat", "a dog"]
    predictions = ["the bat", "a dg"]
    # CER: 1 substitution + 1 deletion over 7 + 5 reference characters (corpus level)
    assert CharErrorRate()(predictions, truths).item() == pytest.approx(2 / 12)
    # WER: "cat"->"bat", "dog"->"dg": 2 of 4 reference words
    assert WordErrorRate()(predictions, truths).item() == pytest.approx(2 / 4)
    # corpus-level, not the mean of per-line rates (1/7 and 1/5 average to 0.171)
    assert CharErrorRate()(predictions, truths).item() != pytest.approx((1 / 7 + 1 / 5) / 2)


def test_kneser_ney_probabilities_by_hand():
    model = CharNgram.fit(["ab", "ab", "b"], order=2)
    # after one character: BOS->{a: 2, b: 1}, a->{b: 2}, b->{EOS: 3}; counts 2, 1, 2, 3:
    # one 1 and two 2s, discount 1 / (1 + 2 * 2) = 0.2
    # no context: continuation counts a 1 (after BOS), b 2 (after BOS, after a), EOS 1
    # (after b): two 1s and one 2, discount 2 / (2 + 2) = 0.5; unseen mass uniform 1/4
    unigram_a = (1 - 0.5) / 4 + 0.5 * 3 / 4 * (1 / 4)
    assert math.exp(model.log_prob("", "a")) == pytest.approx(unigram_a)  # 0.21875
    assert math.exp(model.log_prob("", "b")) == pytest.approx((2 - 0.5) / 4 + 0.5 * 3 / 16)
    assert math.exp(model.log_prob(BOS, "a")) == pytest.approx(
        (2 - 0.2) / 3 + 0.2 * 2 / 3 * unigram_a
    )
    assert math.exp(model.log_prob(BOS, "z")) == pytest.approx(0.2 * 2 / 3 * 0.5 * 3 / 16)
    # a context never seen backs off to the shorter one entirely
    assert math.exp(model.log_prob("z", "a")) == pytest.approx(unigram_a)
    # a text: BOS -> a, a -> b, b -> EOS; a -> b and b -> EOS were always so, less discount
    a_then_b = (2 - 0.2) / 2 + 0.2 * 1 / 2 * ((2 - 0.5) / 4 + 0.5 * 3 / 16)
    b_then_end = (3 - 0.2) / 3 + 0.2 * 1 / 3 * ((1 - 0.5) / 4 + 0.5 * 3 / 16)
    by_hand = math.log(math.exp(model.log_prob(BOS, "a")) * a_then_b * b_then_end)
    assert model.text_log_prob("ab") == pytest.approx(by_hand)
    assert model.bits_per_char(["ab"]) == pytest.approx(-by_hand / 3 / math.log(2))


@pytest.mark.parametrize("context", ["", "le t", "zzzz", "\x02\x02\x02\x02", "ma f"])
def test_language_model_probabilities_sum_to_one(context):
    texts = ["le testament de ma femme", "ma fortune", "le 2 mars 1915", "Je lègue"]
    model = CharNgram.fit(texts, order=5)
    unseen = math.exp(model.log_prob(context, "#"))  # any character never read
    total = sum(math.exp(model.log_prob(context, char)) for char in model.vocabulary)
    assert total + unseen == pytest.approx(1.0)


def test_the_language_model_breaks_an_acoustic_tie():
    # frames: "a", then "b" or "c" at exactly even odds; the LM has only ever read "ab"
    charset = Charset(tuple("abc"))
    log_probs = torch.full((3, 1, charset.num_classes), -1e4)
    log_probs[0, 0, charset.encode("a")[0]] = 0.0
    log_probs[1, 0, charset.encode("b")[0]] = math.log(0.5)
    log_probs[1, 0, charset.encode("c")[0]] = math.log(0.5)
    log_probs[2, 0, 0] = 0.0  # blank
    lengths = torch.tensor([3])
    lm = CharNgram.fit(["ab"] * 5, order=3)
    with_lm = BeamDecoder(charset, 10, 0, 1000.0, lm=lm, lm_weight=1.0, lm_char_bonus=0.0)
    assert with_lm.name == "beam_lm"
    assert with_lm(log_probs, lengths)[0].text == "ab"
    lm_c = CharNgram.fit(["ac"] * 5, order=3)
    other = BeamDecoder(charset, 10, 0, 1000.0, lm=lm_c, lm_weight=1.0, lm_char_bonus=0.0)
    assert other(log_probs, lengths)[0].text == "ac"


def test_build_decoders_adds_beam_lm_with_a_language_model(tiny_params):
    decoders = build_decoders(CHARSET, tiny_params.evaluate, CharNgram.fit(["abc"], 3))
    assert set(decoders) == {"greedy", "beam", "beam_lm"}
    assert decoders["beam_lm"].lm_weight == tiny_params.evaluate.lm_weight
    assert decoders["beam_lm"].lm_word_bonus == tiny_params.evaluate.lm_word_bonus
    assert decoders["greedy"].prior("abc") == decoders["beam"].prior("abc") == 0.0


def test_words_are_runs_of_letters_looked_up_in_lower_case():
    assert words_of("L’homme, 1915 Je lègue: œuvre") == ["l", "homme", "je", "lègue", "œuvre"]
    assert words_of(" 12, - ") == []
    model = CharNgram.fit(["Ceci est mon testament.", "le 2 mars"], order=3)
    assert model.words == {"ceci", "est", "mon", "testament", "le", "mars"}
    assert model.known_words("Mon testament, le 3 avril") == 3  # mon, testament, le


def test_the_word_bonus_picks_the_word_training_text_holds():
    # one frame, "b" or "c" at even odds; the unigram LM has read "c" five times as often,
    # but only as part of the word "ccccc": "b" is a word of its own
    charset = Charset(tuple("bc"))
    log_probs = torch.full((2, 1, charset.num_classes), -1e4)
    log_probs[0, 0, charset.encode("b")[0]] = math.log(0.5)
    log_probs[0, 0, charset.encode("c")[0]] = math.log(0.5)
    log_probs[1, 0, 0] = 0.0  # blank
    lengths = torch.tensor([2])
    lm = CharNgram.fit(["b", "ccccc"], order=1)
    assert lm.log_prob("", "c") > lm.log_prob("", "b")

    def read(word_bonus: float) -> str:
        decoder = BeamDecoder(
            charset, 10, 0, 1000.0, lm=lm, lm_weight=1.0, lm_word_bonus=word_bonus
        )
        return decoder(log_probs, lengths)[0].text

    assert read(0.0) == "c"
    assert read(5.0) == "b"


def test_beam_score_is_the_weighted_log_prob_and_the_bonuses():
    lm = CharNgram.fit(["abab", "abba", "ba"], order=3)
    # bits_per_char counts the end too: "ab" is 3 predictions
    log_p = -lm.bits_per_char(["ab"]) * math.log(2) * 3
    assert math.isclose(lm.beam_score("ab", 1.0, 0.0, 0.0), log_p)
    assert math.isclose(lm.beam_score("ab", 0.5, 2.0, 0.0), 0.5 * log_p + 2.0 * 2)
    # "ab" is no word of the training texts ("abab", "abba", "ba"); "ba" is
    assert math.isclose(lm.beam_score("ab", 0.5, 2.0, 3.0), 0.5 * log_p + 2.0 * 2)
    log_p_ba = -lm.bits_per_char(["ba"]) * math.log(2) * 3
    assert math.isclose(lm.beam_score("ba", 0.5, 2.0, 3.0), 0.5 * log_p_ba + 2.0 * 2 + 3.0)


@pytest.mark.parametrize("bonuses", [(1.0, 0.0, 0.0), (0.5, 1.5, 0.0), (0.5, 1.5, 2.0)])
def test_the_beam_adds_what_beam_score_says_for_a_whole_text(bonuses):
    # peaked frames spell "ab ba" (an acoustic score of ~0), so the hypothesis score is the
    # LM's part alone: the decoder's token-by-token sum must equal the one formula, which
    # bench/ensemble.py uses to rank whole texts
    frames = ["a", "-", "b", "-", " ", "-", "b", "-", "a", "-"]
    log_probs = emissions(*frames, peak=1 - 1e-7)
    lm = CharNgram.fit(["ab ab", "b a", "ba"], order=3)
    weight, char_bonus, word_bonus = bonuses
    decoder = BeamDecoder(
        CHARSET, 10, 0, 1000.0, lm=lm, lm_weight=weight, lm_char_bonus=char_bonus,
        lm_word_bonus=word_bonus,
    )  # fmt: skip
    [hypothesis] = decoder(log_probs, torch.tensor([len(frames)]))
    assert hypothesis.text == "ab ba"
    assert lm.known_words("ab ba") == 2
    expected = lm.beam_score("ab ba", weight, char_bonus, word_bonus)
    assert hypothesis.score == pytest.approx(expected, abs=1e-3)
    # what the joint choice over several sizes adds per version (recognizer.joint_choice)
    assert decoder.prior("ab ba") == pytest.approx(hypothesis.score, abs=1e-3)


def test_a_language_model_file_keeps_its_words_and_an_old_one_is_refused(tmp_path):
    model = CharNgram.fit(["Je lègue", "mon bien"], order=3)
    model.save(tmp_path / "lm.json")
    loaded = CharNgram.load(tmp_path / "lm.json")
    assert loaded.words == {"je", "lègue", "mon", "bien"}
    assert loaded.text_log_prob("Je") == model.text_log_prob("Je")
    payload = json.loads((tmp_path / "lm.json").read_text())
    del payload["words"]  # as the lm stage wrote it before the word bonus
    (tmp_path / "old.json").write_text(json.dumps(payload))
    with pytest.raises(LanguageModelError, match=r"old\.json: .*rebuild it"):
        CharNgram.load(tmp_path / "old.json")


def test_a_language_model_pickles_as_what_it_is_built_from():
    """Decoding processes get the LM pickled: the copy has the same order, words and
    probabilities (not the memo of the original's log-probs)."""
    lm = CharNgram.fit(["le testament", "ma femme", "l'homme"], order=4)
    copy = pickle.loads(pickle.dumps(lm))
    assert (copy.order, copy.words, copy.vocabulary) == (lm.order, lm.words, lm.vocabulary)
    for context, char in [("le t", "e"), ("", "m"), ("zzz", "a"), ("ma ", "f")]:
        assert copy.log_prob(context, char) == lm.log_prob(context, char)
    decoder = BeamDecoder(CHARSET, 10, 0, 1000.0, lm=lm, lm_weight=0.5, lm_char_bonus=1.0)
    decoder._decoder()  # a built flashlight search stays behind: the copy builds its own
    assert pickle.loads(pickle.dumps(decoder)).lm.words == lm.words


def test_decode_processes_zero_is_one_per_core_up_to_a_cap(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    assert resolve_processes(0) == AUTO_PROCESSES_MAX
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert resolve_processes(0) == 2
    assert resolve_processes(3) == 3
