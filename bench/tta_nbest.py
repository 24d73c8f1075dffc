"""Would a wider pool help `evaluate.scales`? The joint choice (recognizer.joint_choice)
picks among the texts the versions' searches found, each version's best only. Here each
beam search keeps its n best texts (flashlight's ``nbest``), and per set of sizes and per
depth k the pool is every version's k best; the joint rule keeps the likeliest under all
the versions together, as the pipeline does. Prints validation CER per decoder for that
choice and for the oracle over the same pool (the text closest to the truth). Choose on
validation.

    python bench/tta_nbest.py MODEL LINES --params RUN/params.yaml --lm RUN/lm.json

Measured on poilus-b1 and the embedded lines: README, "Training on real handwriting".
"""

from __future__ import annotations

import torch
from _runs import read_split_from_args  # bench/ is on the path of its scripts
from torchmetrics.functional.text import char_error_rate

from pipeline.decoding import BeamDecoder, build_decoders
from pipeline.recognizer import Reading, joint_choice, rescaled

DEPTHS = (1, 2, 3, 5, 8)
SETS = [(1.0,), (1.0, 0.9, 1.1), (1.0, 0.8, 0.9, 1.1, 1.25)]  # the line as stored first


def main() -> None:
    recognizer, dataset = read_split_from_args(__doc__)
    truths, n = dataset.texts, len(dataset)
    # the recognizer's beam decoders, each keeping its deepest n-best list
    lm = getattr(recognizer.decoders.get("beam_lm"), "lm", None)
    deep = build_decoders(recognizer.charset, recognizer.params.evaluate, lm, depth=max(DEPTHS))
    searches = {name: d for name, d in deep.items() if isinstance(d, BeamDecoder)}
    scales = sorted({scale for scales in SETS for scale in scales})
    # per scale: each line's log_probs (T_i, K) and, per decoder, its n best texts
    emissions = {s: [torch.empty(0)] * n for s in scales}
    found = {s: {name: [[] for _ in range(n)] for name in searches} for s in scales}
    for scale in scales:
        widths = [max(1, round(w * scale)) for w in dataset.widths]
        for indices, log_probs, frames, _ in recognizer.emissions(
            lambda i, s=scale: rescaled(dataset[i]["image"], s), widths, progress=f"x{scale}"
        ):  # log_probs (T, B, K)
            counts = frames.tolist()
            for b, i in enumerate(indices):
                emissions[scale][i] = log_probs[: counts[b], b].clone()
            for name, decoder in searches.items():
                for i, hypotheses in zip(indices, decoder.nbest(log_probs, frames), strict=True):
                    found[scale][name][i] = [h.text for h in hypotheses]

    def cer(texts: list[str]) -> str:
        return f"{float(char_error_rate(texts, truths)):.4f}"

    print(f"| sizes | pool | {' | '.join(searches)} | oracle: {' | '.join(searches)} |")
    print(f"|---|---|{'---|' * 2 * len(searches)}")
    for sizes in SETS:
        for depth in DEPTHS:
            kept, oracle = [], []
            for name, decoder in searches.items():
                chosen, closest = [], []
                for i in range(n):
                    pool = sorted({t for s in sizes for t in found[s][name][i][:depth]})
                    # the pipeline's joint score of each text alone: the same sum over versions
                    scores = [
                        joint_choice(
                            [(Reading(text, 0.0, 0.0, 0), emissions[s][i]) for s in sizes],
                            decoder,
                            recognizer.charset,
                        ).score
                        for text in pool
                    ]
                    chosen.append(pool[max(range(len(pool)), key=scores.__getitem__)])
                    closest.append(min(pool, key=lambda t, i=i: _distance(t, truths[i])))
                kept.append(cer(chosen))
                oracle.append(cer(closest))
            label = " / ".join(map(str, sizes))
            print(
                f"| {label} | top {depth} | {' | '.join(kept)} | {' | '.join(oracle)} |", flush=True
            )


def _distance(a: str, b: str) -> float:
    return float(char_error_rate([a], [b]))


if __name__ == "__main__":
    main()
