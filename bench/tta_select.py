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
line the version closest to the truth: what a perfect choice would reach); then the joint
rule with its versions weighed by how sure the network is of each (``WEIGHTS``, below).
"""

from __future__ import annotations

import math

import torch
from _runs import read_split_from_args  # bench/ is on the path of its scripts
from torchmetrics.functional.text import char_error_rate

from pipeline.recognizer import Reading, joint_choice, rescaled, text_log_likelihoods

SCALES = (0.8, 0.9, 1.0, 1.1, 1.25)
SETS = [(0.9, 1.0, 1.1), (0.8, 0.9, 1.0, 1.1, 1.25), (0.8, 0.9, 1.0), (1.0, 1.1, 1.25)]
RULES = ("mean", "sum", "ctc")  # one version kept per line; "joint" below asks them all
# weights of the versions in the joint rule (below); "equal" is the joint rule itself
WEIGHTS = ("equal", "frames", "soft 10", "soft 30", "soft 100", "drop 0.05", "drop 0.1", "drop 0.2")


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

    # The joint rule with each version weighed (weights summing to the versions' count, so
    # equal weights are "joint" itself): per version, log P(text | version) and the
    # decoder's prior times its weight. "frames": each version weighed by 1 / its frames, so
    # a larger version's longer sum counts no more than a smaller one's; "soft T": by
    # exp(T x its best path's log-probability per frame), the surer version counting more;
    # "drop D": versions whose best path per frame is more than D below the line as stored
    # left out.
    likelihoods: dict[tuple[str, int], dict[str, dict[float, float]]] = {}

    def likelihood(name: str, i: int) -> dict[str, dict[float, float]]:
        """log P(text | version) of each text the decoder read at any scale, per scale."""
        if (name, i) not in likelihoods:
            pool = sorted({texts[s][name][i] for s in SCALES})
            table: dict[str, dict[float, float]] = {text: {} for text in pool}
            for s in SCALES:
                frames = torch.full((len(pool),), emissions[s][i].shape[0], dtype=torch.long)
                expanded = emissions[s][i][:, None].expand(-1, len(pool), -1)  # (T_v, C, K)
                found = text_log_likelihoods(expanded, frames, pool, recognizer.charset)
                for text, value in zip(pool, found, strict=True):
                    table[text][s] = value
            likelihoods[name, i] = table
        return likelihoods[name, i]

    def weights(rule: str, scales: tuple[float, ...], i: int) -> list[float]:
        sure = [sureness["mean"][s][decoders[0]][i] for s in scales]  # best path per frame
        if rule == "equal":
            raw = [1.0] * len(scales)
        elif rule == "frames":
            raw = [1.0 / emissions[s][i].shape[0] for s in scales]
        elif rule.startswith("soft"):
            top = max(sure)
            raw = [math.exp(float(rule.split()[1]) * (value - top)) for value in sure]
        else:  # drop D
            stored = sure[scales.index(1.0)]
            raw = [float(value >= stored - float(rule.split()[1])) for value in sure]
        return [len(scales) * w / sum(raw) for w in raw]

    def weighted_texts(scales: tuple[float, ...], name: str, rule: str) -> list[str]:
        chosen = []
        for i in range(n):
            table, w = likelihood(name, i), weights(rule, scales, i)
            pool = sorted({texts[s][name][i] for s in scales})
            prior = recognizer.decoders[name].prior
            score = [
                sum(wv * table[t][s] for wv, s in zip(w, scales, strict=True)) + sum(w) * prior(t)
                for t in pool
            ]
            chosen.append(pool[max(range(len(pool)), key=score.__getitem__)])
        return chosen

    print(f"| scales | joint, weighed by | {' | '.join(decoders)} |")
    print(f"|---|---|{'---|' * len(decoders)}")
    for scales in SETS:
        for rule in WEIGHTS:
            row = [cer(weighted_texts(scales, d, rule)) for d in decoders]
            print(f"| {' / '.join(map(str, scales))} | {rule} | {' | '.join(row)} |", flush=True)


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
