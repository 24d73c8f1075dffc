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

``FlashlightCharLM`` plugs it into torchaudio's flashlight ``ctc_decoder``: the decoder asks
for the score of each token a hypothesis grows by. (The flashlight-text wheel's KenLM would
score an ARPA file in C++, but it is built for orders up to 6, refuses positive log-probs,
and the lexicon-free search adds no per-token score: the per-character bonus below could
not travel with it.)
"""

from __future__ import annotations

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


class CharNgram:
    def __init__(self, order: int, counts: dict[str, dict[str, int]]) -> None:
        if order < 1:
            raise LanguageModelError(f"order must be >= 1, got {order}")
        self.order = order
        self.counts = counts  # context (0..order-1 chars) -> next char -> count
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
        for text in texts:
            padded = BOS * (order - 1) + text + EOS
            for i in range(order - 1, len(padded)):
                for n in range(order):  # contexts of 0 .. order-1 characters
                    counts[padded[i - n : i]][padded[i]] += 1
        return cls(order, {h: dict(f) for h, f in counts.items()})

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

    def bits_per_char(self, texts: Sequence[str]) -> float:
        """Cross-entropy on ``texts`` (EOS included), in bits per character."""
        total = sum(self.text_log_prob(text) for text in texts)
        chars = sum(len(text) + 1 for text in texts)
        return -total / max(chars, 1) / math.log(2)

    def save(self, path: Path) -> None:
        payload = {"format": FORMAT, "order": self.order, "counts": self.counts}
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
        return cls(int(payload["order"]), payload["counts"])


def flashlight_lm(model: CharNgram, tokens: Sequence[str], char_bonus: float, lm_weight: float):
    """A torchaudio ``CTCDecoderLM`` scoring ``tokens`` (the decoder's token list) with
    ``model``. Tokens that are not characters (blank, silence) score as the line's end.

    The decoder adds ``lm_weight`` x this score to a hypothesis per token; ``char_bonus`` is
    added per character (divided by ``lm_weight`` here, so it is a plain log-prob bonus)
    to balance the LM's preference for short texts.
    """
    from torchaudio.models.decoder import CTCDecoderLM, CTCDecoderLMState

    bonus = char_bonus / lm_weight if lm_weight else 0.0

    class FlashlightCharLM(CTCDecoderLM):
        def __init__(self) -> None:
            CTCDecoderLM.__init__(self)
            self.contexts: dict = {}

        def start(self, start_with_nothing: bool) -> CTCDecoderLMState:
            self.contexts.clear()  # one line at a time: forget the last line's states
            state = CTCDecoderLMState()
            self.contexts[state] = model.start_context()
            return state

        def score(self, state: CTCDecoderLMState, token_index: int):
            char = tokens[token_index]
            context = self.contexts[state]
            child = state.child(token_index)
            if child not in self.contexts:
                self.contexts[child] = model.truncate(context + char)
            if len(char) != 1:
                return child, model.log_prob(context, EOS)
            return child, model.log_prob(context, char) + bonus

        def finish(self, state: CTCDecoderLMState):
            return state, model.log_prob(self.contexts[state], EOS)

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
