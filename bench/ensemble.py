"""Posterior averaging of models of the same shape and charset, measured: each model reads
the lines, their per-frame probabilities are averaged, and the mean is decoded by each of
the params' decoders (the first model's). The frame-by-frame mean needs the models' CTC
peaks on the same frames; two models fine-tuned from one teacher did not put them there
(README, "Two half-budget models read together"; bench/tta.py for variants whose peaks
move). The likelier-text pick below needs no frames to line up.

    python bench/ensemble.py LINES RUN1/model.ckpt RUN2/model.ckpt --splits validation test \\
        --params RUN1/params.yaml --lm RUN1/lm.json

Rows per split: each model alone, then the mean of probabilities (``mean p``), the mean
of log-probabilities renormalized (``mean log p``), and each decoder's texts of every
model, the one kept whose CTC likelihood averaged over the models is highest (no frames
need line up; for beam_lm, plus the LM's weighted score and bonus, as the decoder adds them).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torchmetrics.functional.text import char_error_rate

from pipeline.charlm import CharNgram
from pipeline.data import LineDataset
from pipeline.layout import PROJECT_PARAMS, LinesFolder
from pipeline.recognizer import Recognizer, text_log_likelihoods


def mean_of_probabilities(log_probs: list[torch.Tensor]) -> torch.Tensor:
    """Each ``(T, B, K)`` log-softmax -> the log of their mean probability, ``(T, B, K)``."""
    return torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(log_probs))


def mean_of_log_probabilities(log_probs: list[torch.Tensor]) -> torch.Tensor:
    """The geometric mean, renormalized over the classes: ``(T, B, K)``."""
    return torch.log_softmax(torch.stack(log_probs).mean(dim=0), dim=-1)


def pick_by_joint_likelihood(
    log_probs: list[torch.Tensor],
    frames: torch.Tensor,
    candidates: list[list[str]],
    charset,
    text_score: Callable[[str], float] | None = None,
) -> list[str]:
    """Per line, of the models' texts ``candidates[m][b]``, the one with the highest mean over
    models of log P(text | line) (CTC, summed over alignments: no frame need line up), plus
    ``text_score(text)`` when given (the LM's weighted log-prob and bonus)."""
    chosen = []
    for b in range(len(candidates[0])):
        texts = sorted({found[b] for found in candidates})
        scores = [0.0] * len(texts)
        for lp in log_probs:  # (T, B, K)
            one = lp[:, b : b + 1].expand(-1, len(texts), -1)
            for i, value in enumerate(
                text_log_likelihoods(one, frames[b : b + 1].expand(len(texts)), texts, charset)
            ):
                scores[i] += value
        scores = [
            score / len(log_probs) + (text_score(text) if text_score else 0.0)
            for score, text in zip(scores, texts, strict=True)
        ]
        chosen.append(texts[max(range(len(texts)), key=scores.__getitem__)])
    return chosen


def images_of(dataset: LineDataset):
    return lambda index: dataset[index]["image"]  # (1, H, W)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("lines", type=Path)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--splits", nargs="+", default=["validation"])
    parser.add_argument("--params", type=Path, default=PROJECT_PARAMS, help="decoder settings")
    parser.add_argument("--lm", type=Path, help="character LM: adds the beam_lm decoder")
    args = parser.parse_args()
    recognizers = [
        Recognizer.load(m, device="cpu", params=args.params, lm=args.lm) for m in args.models
    ]
    first = recognizers[0]
    evaluate = first.params.evaluate
    text_scores = {}  # the beam_lm decoder's texts are picked with its LM's score added
    if args.lm:
        lm = CharNgram.load(args.lm)
        bonuses = (evaluate.lm_weight, evaluate.lm_char_bonus, evaluate.lm_word_bonus)
        text_scores["beam_lm"] = lambda text: lm.beam_score(text, *bonuses)
    for other, path in zip(recognizers[1:], args.models[1:], strict=True):
        if other.charset != first.charset or other.height != first.height:
            raise SystemExit(f"{path}: another charset or height than {args.models[0]}")
    print(f"| split | read by | {' | '.join(first.decoders)} |")
    print(f"|---|---|{'---|' * len(first.decoders)}")
    for split in args.splits:
        dataset = LineDataset(LinesFolder(args.lines).split(split), first.charset, first.height)
        # every model batches the same widths the same way: batch b is the same lines for all
        per_model = [list(r.emissions(images_of(dataset), dataset.widths)) for r in recognizers]
        batches = [(indices, frames) for indices, _, frames, _ in per_model[0]]
        truths = [dataset.texts[i] for indices, _ in batches for i in indices]
        rows = [
            (str(path), lambda log_probs, m=index: log_probs[m])
            for index, path in enumerate(args.models)
        ]
        rows += [("mean p", mean_of_probabilities), ("mean log p", mean_of_log_probabilities)]
        for name, combine in rows:
            cers = []
            for decoder in first.decoders.values():
                texts = [
                    h.text
                    for b, (_, frames) in enumerate(batches)
                    for h in decoder(combine([emitted[b][1] for emitted in per_model]), frames)
                ]
                cers.append(f"{float(char_error_rate(texts, truths)):.4f}")
            print(f"| {split} | {name} | {' | '.join(cers)} |", flush=True)
        cers = []
        for name, decoder in first.decoders.items():
            texts = []
            for b, (_, frames) in enumerate(batches):
                log_probs = [emitted[b][1] for emitted in per_model]
                candidates = [[h.text for h in decoder(lp, frames)] for lp in log_probs]
                texts += pick_by_joint_likelihood(
                    log_probs, frames, candidates, first.charset, text_scores.get(name)
                )
            cers.append(f"{float(char_error_rate(texts, truths)):.4f}")
        print(f"| {split} | each model's text, the likeliest under all | {' | '.join(cers)} |")


if __name__ == "__main__":
    main()
