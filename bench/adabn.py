"""Test-time BatchNorm re-estimation (AdaBN), measured: the encoder's BatchNorm statistics,
learnt on the training writers, re-estimated from the lines being read (their images only,
never their texts), then the lines decoded by each of the params' decoders.

    python bench/adabn.py RUN/model.ckpt LINES --splits validation test \\
        --params RUN/params.yaml --lm RUN/lm.json --mix 0.5 1.0

Rows per split: ``trained`` (the statistics as trained), ``split A`` (estimated from all of
the split's lines, mixed A x estimated + (1 - A) x trained) and ``writer A`` (each writer's
lines read with statistics estimated from that writer's lines alone; lines without a
writer form one group). Each line is its own batch while estimating, so padding never
enters the statistics; the estimate is the plain average over lines (``momentum=None``).
Choose A on validation; read test once.
"""

from __future__ import annotations

import argparse
import copy
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchmetrics.functional.text import char_error_rate

from pipeline.data import LineDataset
from pipeline.layout import PROJECT_PARAMS, LinesFolder
from pipeline.recognizer import Recognizer


def batch_norms(network: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def estimate_statistics(
    network: nn.Module, lines: Sequence[torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each BatchNorm layer's (mean, var) averaged over ``lines``, each ``(1, H, W)`` run
    as a batch of its own; the network is left as it was."""
    probe = copy.deepcopy(network).eval()
    norms = batch_norms(probe)
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches seen
        norm.train()
    device = next(probe.parameters()).device
    with torch.no_grad():
        for line in lines:
            image = line[None].to(device)  # (1, 1, H, W)
            probe(image, torch.tensor([image.shape[-1]], device=device))
    return [(norm.running_mean.clone(), norm.running_var.clone()) for norm in norms]


def with_statistics(
    network: nn.Module, statistics: list[tuple[torch.Tensor, torch.Tensor]], mix: float
) -> nn.Module:
    """A copy of ``network`` whose BatchNorm statistics are ``mix`` x ``statistics`` +
    (1 - mix) x its own."""
    adapted = copy.deepcopy(network).eval()
    for norm, (mean, var) in zip(batch_norms(adapted), statistics, strict=True):
        norm.running_mean.mul_(1 - mix).add_(mix * mean)
        norm.running_var.mul_(1 - mix).add_(mix * var)
    return adapted


def read(recognizer: Recognizer, network: nn.Module, dataset: LineDataset, indices: list[int]):
    """Each decoder's texts of ``dataset``'s lines ``indices``, read by ``network``."""
    reader = copy.copy(recognizer)
    reader.network = network
    readings = reader.read_lines(
        lambda i: dataset[indices[i]]["image"],
        [dataset.widths[i] for i in indices],
        list(recognizer.decoders),
    )
    return {name: [r.text for r in found] for name, found in readings.by_decoder.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("lines", type=Path)
    parser.add_argument("--splits", nargs="+", default=["validation"])
    parser.add_argument("--params", type=Path, default=PROJECT_PARAMS, help="decoder settings")
    parser.add_argument("--lm", type=Path, help="character LM: adds the beam_lm decoder")
    parser.add_argument("--mix", type=float, nargs="+", default=[1.0])
    args = parser.parse_args()
    recognizer = Recognizer.load(args.model, device="cpu", params=args.params, lm=args.lm)
    network = recognizer.network
    print(f"| split | statistics | {' | '.join(recognizer.decoders)} |")
    print(f"|---|---|{'---|' * len(recognizer.decoders)}")
    for split in args.splits:
        dataset = LineDataset(
            LinesFolder(args.lines).split(split), recognizer.charset, recognizer.height
        )
        everything = list(range(len(dataset.texts)))
        by_writer: dict[str | None, list[int]] = defaultdict(list)
        for index, writer in enumerate(dataset.writers):
            by_writer[writer].append(index)

        def row(name: str, texts: dict[str, list[str]], split=split, truths=dataset.texts):
            cers = [f"{float(char_error_rate(t, truths)):.4f}" for t in texts.values()]
            print(f"| {split} | {name} | {' | '.join(cers)} |", flush=True)

        row("trained", read(recognizer, network, dataset, everything))
        whole = estimate_statistics(network, [dataset[i]["image"] for i in everything])
        per_writer = {
            writer: estimate_statistics(network, [dataset[i]["image"] for i in indices])
            for writer, indices in by_writer.items()
        }
        for mix in args.mix:
            row(
                f"split {mix}",
                read(recognizer, with_statistics(network, whole, mix), dataset, everything),
            )
            texts: dict[str, list[str]] = {
                name: [""] * len(everything) for name in recognizer.decoders
            }
            for writer, indices in by_writer.items():
                adapted = with_statistics(network, per_writer[writer], mix)
                for name, found in read(recognizer, adapted, dataset, indices).items():
                    for index, text in zip(indices, found, strict=True):
                        texts[name][index] = text
            row(f"writer {mix}", texts)


if __name__ == "__main__":
    main()
