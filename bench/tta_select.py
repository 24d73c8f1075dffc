"""Test-time scale selection, measured: the network reads each line as stored and at a few
scales (the whole line resized, so its width and its frames follow; the height then cut or
padded with the line's paper about its middle), every decoder reads every version, and per
line the version kept whose best path the network is surest of, by one of three rules:
the largest log-probability per frame averaged over the line's frames ("mean") or summed
("sum"), or the decoder's text's log P(text | line) over all alignments ("ctc"). A fourth
rule ("joint", what `evaluate.scales` keeps: recognizer.joint_choice) asks every version
about every text: of the texts the decoder read at the set's scales, the one with the
largest log P(text | line) summed over the versions (for beam_lm, plus the set's size times
the LM's own term, as the decoder scores it). Unlike averaging posteriors (bench/tta.py),
nothing needs the versions' frames to line up. Choose on validation.

    python bench/tta_select.py MODEL LINES --params RUN/params.yaml --lm RUN/lm.json

Prints CER per scale alone, the kept versions' CER per set of scales, and the oracle's (per
line the version closest to the truth: what a perfect choice would reach).
"""

from __future__ import annotations

import torch
from _runs import read_split_from_args  # bench/ is on the path of its scripts
from torchmetrics.functional.text import char_error_rate

from pipeline.recognizer import Reading, joint_choice, rescaled, text_log_likelihoods

SCALES = (0.8, 0.9, 1.0, 1.1, 1.25)
SETS = [(0.9, 1.0, 1.1), (0.8, 0.9, 1.0, 1.1, 1.25), (0.8, 0.9, 1.0), (1.0, 1.1, 1.25)]
RULES = ("mean", "sum", "ctc")  # one version kept per line; "joint" below asks them all


def main() -> None:
    recognizer, dataset = read_split_from_args(__doc__)
    truths = dataset.texts
    # per scale: each line's text by each decoder, and how sure the network is of it, three
    # ways: its best path's log-probability per frame ("mean") and in all ("sum"), and the
    # decoder's text's log P(text | line) over all alignments ("ctc", per decoder)
    n, decoders = len(dataset), list(recognizer.decoders)
    texts = {s: {d: [""] * n for d in decoders} for s in SCALES}
    sureness = {rule: {s: {d: [0.0] * n for d in decoders} for s in SCALES} for rule in RULES}
    emissions: dict[float, list[torch.Tensor]] = {s: [torch.empty(0)] * n for s in SCALES}
    for scale in SCALES:
        widths = [max(1, round(w * scale)) for w in dataset.widths]
        for indices, log_probs, frames, _ in recognizer.emissions(
            lambda i, s=scale: rescaled(dataset[i]["image"], s), widths, progress=f"scale {scale}"
        ):  # log_probs (T, B, K)
            paths = best_path_log_probabilities(log_probs, frames).tolist()
            counts = frames.tolist()
            for b, i in enumerate(indices):
                emissions[scale][i] = log_probs[: counts[b], b].clone()  # (T_i, K)
            for name, decoder in recognizer.decoders.items():
                read = [h.text for h in decoder(log_probs, frames)]
                likelihoods = text_log_likelihoods(log_probs, frames, read, recognizer.charset)
                for b, i in enumerate(indices):
                    texts[scale][name][i] = read[b]
                    sureness["mean"][scale][name][i] = paths[b] / counts[b]
                    sureness["sum"][scale][name][i] = paths[b]
                    sureness["ctc"][scale][name][i] = likelihoods[b]

    def joint_texts(scales: tuple[float, ...], name: str) -> list[str]:
        """The pipeline's own choice (what `evaluate.scales` keeps)."""
        return [
            joint_choice(
                [(Reading(texts[s][name][i], 0.0, 0.0, 0), emissions[s][i]) for s in scales],
                recognizer.decoders[name],
                recognizer.charset,
            ).text
            for i in range(n)
        ]

    def cer(predicted: list[str]) -> str:
        return f"{float(char_error_rate(predicted, truths)):.4f}"

    print(f"| scales | kept by | {' | '.join(decoders)} |")
    print(f"|---|---|{'---|' * len(decoders)}")
    for scale in SCALES:
        print(f"| {scale} | alone | {' | '.join(cer(texts[scale][d]) for d in decoders)} |")
    for scales in SETS:
        for rule, sure in sureness.items():
            row = []
            for d in decoders:
                kept = [max(scales, key=lambda s, i=i: sure[s][d][i]) for i in range(n)]
                row.append(cer([texts[s][d][i] for i, s in enumerate(kept)]))
            print(f"| {' / '.join(map(str, scales))} | {rule} | {' | '.join(row)} |")
        row = [cer(joint_texts(scales, d)) for d in decoders]
        print(f"| {' / '.join(map(str, scales))} | joint | {' | '.join(row)} |")
        oracle = []
        for d in decoders:
            best = [
                min((texts[s][d][i] for s in scales), key=lambda t, i=i: _distance(t, truths[i]))
                for i in range(n)
            ]
            oracle.append(cer(best))
        print(f"| {' / '.join(map(str, scales))} | oracle | {' | '.join(oracle)} |", flush=True)


def best_path_log_probabilities(log_probs: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``log_probs (T, B, K)``, ``frames (B,)`` -> ``(B,)`` each line's best path's
    log-probability: its largest log-probability summed over its own frames."""
    best = log_probs.max(dim=-1).values  # (T, B)
    inside = torch.arange(best.shape[0], device=best.device)[:, None] < frames[None, :]
    return best.masked_fill(~inside, 0.0).sum(dim=0)


def _distance(a: str, b: str) -> float:
    return float(char_error_rate([a], [b]))


if __name__ == "__main__":
    main()
