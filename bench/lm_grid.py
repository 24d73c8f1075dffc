"""Tune beam_lm on a validation split: the network runs once, then every (lm_weight,
lm_char_bonus, lm_word_bonus) triple decodes the same log-probs. Choose on validation,
never on test.

    python bench/lm_grid.py models/model.ckpt models/lm.json data/lines --split validation \
        --weights 0.5 --bonuses 1.5 --word-bonuses 0 1 2

Prints CER/WER per triple (greedy and beam without LM first) and lines/s of each decoder.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

from torchmetrics.functional.text import char_error_rate, word_error_rate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.charlm import CharNgram
from pipeline.data import LineDataset
from pipeline.decoding import BeamDecoder, GreedyDecoder
from pipeline.layout import LinesFolder
from pipeline.params import load_params
from pipeline.recognizer import Recognizer


def log_probs_of(model_path: Path, lines: Path, split: str):
    recognizer = Recognizer.load(model_path, device="cpu")
    dataset = LineDataset(LinesFolder(lines).split(split), recognizer.charset, recognizer.height)
    batches = [
        (log_probs, frames, [dataset.texts[i] for i in indices])
        for indices, log_probs, frames, _ in recognizer.emissions(
            lambda i: dataset[i]["image"], dataset.widths
        )
    ]
    return recognizer.charset, batches


def score(decoder, batches) -> tuple[float, float, float]:
    texts, truths = [], []
    start = time.perf_counter()
    for log_probs, lengths, truth in batches:
        texts += [h.text for h in decoder(log_probs, lengths)]
        truths += truth
    seconds = time.perf_counter() - start
    return (
        float(char_error_rate(texts, truths)),
        float(word_error_rate(texts, truths)),
        len(truths) / seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("lm", type=Path)
    parser.add_argument("lines", type=Path)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--bonuses", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5])
    parser.add_argument(
        "--word-bonuses", type=float, nargs="+", help="default: evaluate.lm_word_bonus of --params"
    )
    parser.add_argument(
        "--beam-widths", type=int, nargs="+", help="default: evaluate.beam_width of --params"
    )
    args = parser.parse_args()
    params = load_params(args.params).evaluate
    charset, batches = log_probs_of(args.model, args.lines, args.split)
    lm = CharNgram.load(args.lm)
    word_bonuses = args.word_bonuses or [params.lm_word_bonus]
    print(
        f"| decoder | beam | lm_weight | lm_char_bonus | lm_word_bonus | {args.split} CER | WER"
        " | lines/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    cer, wer, speed = score(GreedyDecoder(charset), batches)
    print(f"| greedy | | | | | {cer:.4f} | {wer:.4f} | {speed:.0f} |")
    for width in args.beam_widths or [params.beam_width]:
        beam = (width, params.beam_size_token, params.beam_threshold)
        cer, wer, speed = score(BeamDecoder(charset, *beam), batches)
        print(f"| beam | {width} | | | | {cer:.4f} | {wer:.4f} | {speed:.0f} |", flush=True)
        for weight, bonus, word in itertools.product(args.weights, args.bonuses, word_bonuses):
            decoder = BeamDecoder(
                charset, *beam, lm=lm, lm_weight=weight, lm_char_bonus=bonus, lm_word_bonus=word
            )
            cer, wer, speed = score(decoder, batches)
            row = f"| beam_lm | {width} | {weight} | {bonus} | {word} | {cer:.4f} | {wer:.4f}"
            print(f"{row} | {speed:.0f} |", flush=True)


if __name__ == "__main__":
    main()
