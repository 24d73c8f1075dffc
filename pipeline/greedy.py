"""Greedy (best path) CTC decoding, vectorized torch: no Python loop over frames.

Kept apart from beam search (``pipeline/decoding.py``) so training, which decodes greedily
for val/cer, does not depend on the beam code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.charset import BLANK_ID, Charset


@dataclass(frozen=True)
class Hypothesis:
    text: str
    score: float  # log-probability of the decoded path (greedy) or the beam's score (beam)


def greedy_ids(
    log_probs: torch.Tensor, lengths: torch.Tensor
) -> tuple[list[list[int]], torch.Tensor]:
    """Best path: argmax per frame, merge repeats, drop blanks. Returns (ids, scores (B,))."""
    best_scores, best = log_probs.max(dim=-1)  # (T, B)
    time = torch.arange(log_probs.shape[0], device=log_probs.device)[:, None]  # (T, 1)
    valid = time < lengths.to(log_probs.device)[None, :]  # (T, B)
    previous = torch.cat([torch.full_like(best[:1], BLANK_ID), best[:-1]])  # (T, B)
    keep = valid & (best != BLANK_ID) & (best != previous)  # (T, B)
    scores = (best_scores * valid).sum(dim=0)  # (B,)
    best, keep = best.T.cpu(), keep.T.cpu()  # (B, T)
    return [row[mask].tolist() for row, mask in zip(best, keep, strict=True)], scores.cpu()


def greedy_decode(
    log_probs: torch.Tensor, lengths: torch.Tensor, charset: Charset
) -> list[Hypothesis]:
    ids, scores = greedy_ids(log_probs, lengths)
    return [
        Hypothesis(charset.decode(row), float(score))
        for row, score in zip(ids, scores, strict=True)
    ]
