"""A character n-gram language model for the beam search, built from training text only.

Interpolated Kneser-Ney: each context keeps its counts less a discount, and the discounted
mass goes to its one-character-shorter suffix, whose counts are continuation counts (in how
many different contexts a character followed it, not how often); the last resort is uniform
over the vocabulary. One discount per context length, Ney's estimate n1 / (n1 + 2 n2) from
how many counts are 1 and 2. On poilus-b1's validation texts it reads 2.41 bits/char at
order 5 where Witten-Bell, used before, read 2.59 (README, "Evaluation and error analysis").
Lines start with ``BOS`` context and end with ``EOS``, so the model knows how lines begin
and end. Small and exact: counts in a JSON file, probabilities computed on demand and
memoized.

It also keeps the training texts' words (runs of letters, lower-cased: ``words_of``), so
the beam can add a bonus for each word it completes that training text holds; a 7-gram
alone often spells a word nearly right (README, "Evaluation and error analysis").

``FlashlightCharLM`` plugs it into torchaudio's flashlight ``ctc_decoder``: the decoder asks
for the score of each token a hypothesis grows by. (The flashlight-text wheel's KenLM would
score an ARPA file in C++, but it is built for orders up to 6, refuses positive log-probs,
and the lexicon-free search adds no per-token score: the per-character bonus below could
not travel with it.)
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.layout import LinesFolder
from pipeline.lines import atomic_write_text, read_split

# Control characters never occur in line text (pull removes them), so they can mark the
# start and the end of a line.
BOS = "\x02"
EOS = "\x03"
FORMAT = "htr-pipeline-char-ngram"


class LanguageModelError(PipelineError):
    pass


def is_word_char(char: str) -> bool:
    return char.isalpha()


def word_key(word: str) -> str:
    """How a word is looked up: case does not count (a capital starts many lines)."""
    return word.lower()


def words_of(text: str) -> list[str]:
    """The words of ``text`` as the word bonus sees them: runs of letters, looked-up form
    (``"L’homme, 1915"`` -> ``["l", "homme"]``)."""
    return [
        word_key("".join(run))
        for is_word, run in itertools.groupby(text, key=is_word_char)
        if is_word
    ]


class CharNgram:
    def __init__(
        self, order: int, counts: dict[str, dict[str, int]], words: Iterable[str] = ()
    ) -> None:
        if order < 1:
            raise LanguageModelError(f"order must be >= 1, got {order}")
        self.order = order
        self.counts = counts  # context (0..order-1 chars) -> next char -> count
        self.words = frozenset(words)  # the training texts' words (``words_of``)
        self.vocabulary = sorted({c for following in counts.values() for c in following})
        # The full-length contexts keep their counts; a shorter one, only ever asked about
        # what the longer contexts left open, counts the contexts a character followed it in.
        following: dict[str, Counter[str]] = defaultdict(Counter)
        for context, chars in counts.items():
            if len(context) == order - 1:
                following[context].update(chars)
            if context:
                for char in chars:
                    following[context[1:]][char] += 1
        self._following = {h: dict(f) for h, f in following.items()}
        self._totals = {h: sum(f.values()) for h, f in self._following.items()}
        self._discounts = [self._discount(n) for n in range(order)]
        self.log_prob = lru_cache(maxsize=1_000_000)(self._log_prob)

    def __reduce__(self):
        # pickled as what it is built from (its memo of log-probs is a bound method's cache)
        return type(self), (self.order, self.counts, self.words)

    def _discount(self, length: int) -> float:
        """Ney's discount for contexts of ``length`` characters: n1 / (n1 + 2 n2)."""
        ones = twos = 0
        for context, following in self._following.items():
            if len(context) == length:
                ones += sum(1 for count in following.values() if count == 1)
                twos += sum(1 for count in following.values() if count == 2)
        return ones / (ones + 2 * twos) if ones else 0.5  # no singletons: tiny data

    @classmethod
    def fit(cls, texts: Iterable[str], order: int) -> CharNgram:
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        words: set[str] = set()
        for text in texts:
            padded = BOS * (order - 1) + text + EOS
            for i in range(order - 1, len(padded)):
                for n in range(order):  # contexts of 0 .. order-1 characters
                    counts[padded[i - n : i]][padded[i]] += 1
            words.update(words_of(text))
        return cls(order, {h: dict(f) for h, f in counts.items()}, words)

    def _probability(self, context: str, char: str) -> float:
        if context:
            lower = self._probability(context[1:], char)
        else:
            lower = 1.0 / (len(self.vocabulary) + 1)  # +1: a character never seen
        following = self._following.get(context)
        if not following:
            return lower
        total, discount = self._totals[context], self._discounts[len(context)]
        kept = max(following.get(char, 0) - discount, 0.0) / total
        return kept + discount * len(following) / total * lower

    def _log_prob(self, context: str, char: str) -> float:
        """log P(char | the last order-1 characters of ``context``)."""
        return math.log(self._probability(self.truncate(context), char))

    def truncate(self, context: str) -> str:
        """The last order-1 characters: all the model conditions on."""
        return context[max(len(context) - self.order + 1, 0) :]

    def start_context(self) -> str:
        return BOS * (self.order - 1)

    def text_log_prob(self, text: str) -> float:
        """log P(``text``, then its end): each character given the ones before it."""
        context, total = self.start_context(), 0.0
        for char in text + EOS:
            total += self.log_prob(context, char)
            context = self.truncate(context + char)
        return total

    def known_words(self, text: str) -> int:
        """How many of ``text``'s words training text holds (what the word bonus counts)."""
        return sum(word in self.words for word in words_of(text))

    def beam_score(self, text: str, weight: float, char_bonus: float, word_bonus: float) -> float:
        """What the ``beam_lm`` decoder adds to ``text``'s acoustic score, as one formula
        (``flashlight_lm`` adds it token by token): ``weight`` x log P(text, then its end),
        ``char_bonus`` per character, ``word_bonus`` per word that training text holds."""
        return (
            weight * self.text_log_prob(text)
            + char_bonus * len(text)
            + word_bonus * self.known_words(text)
        )

    def bits_per_char(self, texts: Sequence[str]) -> float:
        """Cross-entropy on ``texts`` (EOS included), in bits per character."""
        total = sum(self.text_log_prob(text) for text in texts)
        chars = sum(len(text) + 1 for text in texts)
        return -total / max(chars, 1) / math.log(2)

    def save(self, path: Path) -> None:
        payload = {
            "format": FORMAT,
            "order": self.order,
            "counts": self.counts,
            "words": sorted(self.words),
        }
        Path(path).write_text(json.dumps(payload, ensure_ascii=False, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> CharNgram:
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LanguageModelError(f"{path}: no language model (run `dvc repro lm`)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LanguageModelError(f"{path}: not a language model file ({error})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise LanguageModelError(f"{path}: not a {FORMAT} file")
        if "words" not in payload:
            raise LanguageModelError(
                f"{path}: written before the LM kept its training words; rebuild it"
                " (`dvc repro lm`, or `python -m stages.lm`)"
            )
        return cls(int(payload["order"]), payload["counts"], payload["words"])


def flashlight_lm(
    model: CharNgram,
    tokens: Sequence[str],
    char_bonus: float,
    lm_weight: float,
    word_bonus: float = 0.0,
):
    """A torchaudio ``CTCDecoderLM`` scoring ``tokens`` (the decoder's token list) with
    ``model``. Tokens that are not characters (blank, silence) score as the line's end.

    The decoder adds ``lm_weight`` x this score to a hypothesis per token; ``char_bonus`` is
    added per character to balance the LM's preference for short texts, and ``word_bonus``
    when a word training text holds ends (at the next non-letter or the line's end). Both
    are divided by ``lm_weight`` here, so they are plain log-prob bonuses: a whole text
    gains ``model.beam_score`` (a test holds the two to each other).
    """
    from torchaudio.models.decoder import CTCDecoderLM, CTCDecoderLMState

    bonus = char_bonus / lm_weight if lm_weight else 0.0
    known_word_bonus = word_bonus / lm_weight if lm_weight else 0.0
    # The decoder calls ``score`` a few thousand times per line, so what it needs per token
    # is looked up once here, and its body stays a few dict and list look-ups.
    is_char = [len(token) == 1 for token in tokens]
    in_word = [len(token) == 1 and is_word_char(token) for token in tokens]
    log_prob, words = model.log_prob, model.words

    def word_end(word: str) -> float:
        return known_word_bonus if word and word_key(word) in words else 0.0

    class FlashlightCharLM(CTCDecoderLM):
        def __init__(self) -> None:
            CTCDecoderLM.__init__(self)
            self.contexts: dict = {}  # state -> (LM context, open word): per line

        def start(self, start_with_nothing: bool) -> CTCDecoderLMState:
            self.contexts.clear()  # one line at a time: forget the last line's states
            state = CTCDecoderLMState()
            self.contexts[state] = (model.start_context(), "")
            return state

        def score(self, state: CTCDecoderLMState, token_index: int):
            context, word = self.contexts[state]
            child = state.child(token_index)
            char = tokens[token_index]
            if child not in self.contexts:
                self.contexts[child] = (
                    model.truncate(context + char),
                    word + char if in_word[token_index] else "",
                )
            if not is_char[token_index]:
                return child, log_prob(context, EOS) + word_end(word)
            if in_word[token_index]:
                return child, log_prob(context, char) + bonus
            return child, log_prob(context, char) + bonus + word_end(word)

        def finish(self, state: CTCDecoderLMState):
            context, word = self.contexts[state]
            return state, log_prob(context, EOS) + word_end(word)

    return FlashlightCharLM()


def build_lm(order: int, lines: LinesFolder, model_path: Path, metrics_path: Path) -> dict:
    """The ``lm`` stage: fit on the training texts, save, and measure on the validation
    texts (which it never saw). Validation and test text never enter the model."""
    texts = read_split(lines.split("train")).column("text").to_pylist()
    model = CharNgram.fit(texts, order)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    validation = read_split(lines.split("validation")).column("text").to_pylist()
    metrics = {
        "order": order,
        "train_chars": sum(len(t) for t in texts),
        "contexts": len(model.counts),
        "train_words": len(model.words),  # distinct, as the word bonus looks them up
        "validation_bits_per_char": round(model.bits_per_char(validation), 4),
    }
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    logging.getLogger(__name__).info(
        "%d-gram of %d characters: %.3f bits/char on validation",
        order,
        metrics["train_chars"],
        metrics["validation_bits_per_char"],
    )
    return metrics
