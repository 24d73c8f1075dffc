"""A pure-Python CTC prefix beam search, written from the algorithm (Hannun et al. 2014),
the approach of the reference implementation: a loop over frames, over the beam and over
the whole vocabulary, with log-sum-exp merges of blank / non-blank prefix scores.
It is the baseline the benchmark compares this project's decoders against."""

from __future__ import annotations

import math
from collections import defaultdict

NEG_INF = -math.inf


def _logsumexp(*values: float) -> float:
    top = max(values)
    if top == NEG_INF:
        return NEG_INF
    return top + math.log(sum(math.exp(v - top) for v in values))


def prefix_beam_search(
    log_probs: list[list[float]], beam_width: int, blank: int = 0
) -> tuple[int, ...]:
    """log_probs: T rows of K log-probabilities -> the best label sequence (no blanks)."""
    # prefix -> (log P(prefix, ending in blank), log P(prefix, ending in non-blank))
    beam: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}
    for frame in log_probs:
        next_beam: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [NEG_INF, NEG_INF])
        for prefix, (p_blank, p_label) in beam.items():
            for label, p in enumerate(frame):
                if label == blank:
                    entry = next_beam[prefix]
                    entry[0] = _logsumexp(entry[0], p_blank + p, p_label + p)
                    continue
                extended = (*prefix, label)
                entry = next_beam[extended]
                if prefix and prefix[-1] == label:
                    # a repeat extends only across a blank; without one it stays the same prefix
                    entry[1] = _logsumexp(entry[1], p_blank + p)
                    same = next_beam[prefix]
                    same[1] = _logsumexp(same[1], p_label + p)
                else:
                    entry[1] = _logsumexp(entry[1], p_blank + p, p_label + p)
        ranked = sorted(next_beam.items(), key=lambda item: _logsumexp(*item[1]), reverse=True)
        beam = {prefix: (scores[0], scores[1]) for prefix, scores in ranked[:beam_width]}
    best = max(beam.items(), key=lambda item: _logsumexp(*item[1]))
    return best[0]
