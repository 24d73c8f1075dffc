"""The ``LightningDataModule``: line parquet -> padded, width-bucketed batches.

A batch is a ``Batch``: images ``(B, 1, H, W)`` float with ink = 1 and paper = 0, padded on
the right with 0 past the widest line to a multiple of 32 px; ``widths (B,)`` the real
widths in px (the model turns them into CTC input lengths); targets concatenated
``(sum L,)`` with ``target_lengths (B,)``; and the texts, ids and writers for metrics and
reports.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset

from pipeline.augment import Transform, build_augmentation
from pipeline.charset import Charset
from pipeline.layout import LinesFolder
from pipeline.lines import decode_png, read_split
from pipeline.loader_server import loader_context
from pipeline.params import AugmentParams, padded_width

log = logging.getLogger(__name__)

BUCKET_BATCHES = 32  # batches per width-sorted pool: less padding, still well shuffled


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_when_ended(pid: int) -> None:
    try:
        ended = os.pidfd_open(pid)  # readable once the process has exited (Linux)
    except (AttributeError, OSError):  # no pidfd here, or it is gone already: ask
        while _alive(pid):
            time.sleep(1.0)
    else:
        select.select([ended], [], [])
    os._exit(0)


def init_worker(training_pid: int, rank: int, worker_id: int) -> None:
    """A loader worker's init. It seeds the worker as Lightning's ``seed_everything(...,
    workers=True)`` would (training always asks for that; Lightning adds its init only to
    loaders that have none), and ends the worker when the training process ends: a
    forkserver worker is the server's child, so torch's own check (the worker's parent
    changed) never fires when the training process is killed."""
    pl_worker_init_function(worker_id, rank)
    threading.Thread(target=_exit_when_ended, args=(training_pid,), daemon=True).start()


@dataclass
class Batch:
    images: torch.Tensor  # (B, 1, H, W)
    widths: torch.Tensor  # (B,) int64
    targets: torch.Tensor  # (sum L,) int64
    target_lengths: torch.Tensor  # (B,) int64
    texts: list[str]
    ids: list[str]
    writers: list[str | None]

    def to(self, device: torch.device) -> Batch:
        self.images = self.images.to(device, non_blocking=True)
        self.widths = self.widths.to(device)
        self.targets = self.targets.to(device)
        self.target_lengths = self.target_lengths.to(device)
        return self


def ctc_min_frames(ids: Sequence[int]) -> int:
    """Frames CTC needs for this target: one per label, plus a blank between repeats."""
    return len(ids) + sum(1 for a, b in itertools.pairwise(ids) if a == b)


def resized_width(width: int, height: int, target_height: int) -> int:
    return max(1, round(width * target_height / height))


def to_model_input(image: torch.Tensor, height: int) -> torch.Tensor:
    """(1, h, w) uint8, dark ink on light paper -> (1, height, w') float, ink 1, paper 0."""
    ink = 1.0 - image.float() / 255.0
    if ink.shape[-2] != height:
        width = resized_width(ink.shape[-1], ink.shape[-2], height)
        ink = F.interpolate(ink[None], size=(height, width), mode="bilinear", antialias=True)[0]
    return ink


class LineDataset(Dataset):
    """One split; images decoded lazily; targets encoded with the model's charset."""

    def __init__(
        self,
        path: Path,
        charset: Charset,
        height: int,
        augmentation: Transform | None = None,
    ) -> None:
        table = read_split(path)
        self.path = path
        self.images: list[bytes] = table.column("image").to_pylist()
        self.texts: list[str] = table.column("text").to_pylist()
        self.ids: list[str] = table.column("id").to_pylist()
        self.writers: list[str | None] = table.column("writer").to_pylist()
        stored_widths = table.column("width").to_pylist()
        stored_heights = table.column("height").to_pylist()
        self.widths = [
            resized_width(w, h, height) for w, h in zip(stored_widths, stored_heights, strict=True)
        ]
        self.charset = charset
        self.height = height
        self.augmentation = augmentation
        # Characters the model cannot output are left out of the loss target (the metrics
        # still compare against the full text, so they count as errors).
        self.unknown_lines = sum(1 for text in self.texts if charset.unknown(text))
        self.targets = [charset.encode_known(text) for text in self.texts]

    def __len__(self) -> int:
        return len(self.texts)

    def keep(self, indices: Sequence[int]) -> None:
        for name in ("images", "texts", "ids", "writers", "widths", "targets"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in indices])

    def __getitem__(self, index: int) -> dict:
        image = decode_png(self.images[index])
        if self.augmentation is not None:
            image = self.augmentation(image)
        return {
            "image": to_model_input(image, self.height),
            "target": self.targets[index],
            "text": self.texts[index],
            "id": self.ids[index],
            "writer": self.writers[index],
        }


def pad_lines(lines: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs ``(1, H, W_i)`` -> ``images (B, 1, H, W)`` padded on the right with
    paper (0) to ``padded_width`` of the widest, and ``widths (B,)``."""
    widths = torch.tensor([line.shape[-1] for line in lines])
    width = padded_width(int(widths.max()))
    images = torch.zeros(len(lines), 1, lines[0].shape[-2], width)  # (B, 1, H, W)
    for i, line in enumerate(lines):
        images[i, :, :, : line.shape[-1]] = line
    return images, widths


def collate(items: list[dict]) -> Batch:
    images, widths = pad_lines([item["image"] for item in items])
    return Batch(
        images=images,
        widths=widths,
        targets=torch.tensor([c for item in items for c in item["target"]], dtype=torch.long),
        target_lengths=torch.tensor([len(item["target"]) for item in items]),
        texts=[item["text"] for item in items],
        ids=[item["id"] for item in items],
        writers=[item["writer"] for item in items],
    )


def cut_batches(order: np.ndarray, widths: np.ndarray, batch_size: int, max_width_sum: int):
    """Consecutive lines of ``order`` (sorted by width) in batches of at most ``batch_size``
    lines whose padded width (lines x ``padded_width`` of the widest) stays within
    ``max_width_sum``."""
    batches, current, widest = [], [], 0
    for index in order.tolist():
        width = padded_width(int(widths[index]))
        wider = max(widest, width)
        if current and (len(current) == batch_size or (len(current) + 1) * wider > max_width_sum):
            batches.append(current)
            current, wider = [], width
        current.append(index)
        widest = wider
    if current:
        batches.append(current)
    return batches


class WidthBucketBatches:
    """Batches of similar width (less padding) under a memory bound, reshuffled every epoch,
    split across ranks.

    A batch holds at most ``batch_size`` lines and at most ``max_pixels`` padded pixels
    (lines x ``height`` x its widest line), so a step's memory is bounded whatever the data.
    Training: shuffle, cut into pools of ``BUCKET_BATCHES`` batches, sort each pool by width,
    batch, shuffle the batches. Evaluation: sorted by width, in order.
    """

    def __init__(
        self,
        widths: Sequence[int],
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        height: int = 1,
        max_pixels: int | None = None,
    ) -> None:
        self.widths = np.asarray(widths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        # the bound on padded width per batch; a line wider than it still gets a batch alone
        self.max_width_sum = max_pixels // height if max_pixels else math.inf
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> WidthBucketBatches:
        # Lightning calls ``dataloader.batch_sampler.sampler.set_epoch(epoch)`` each epoch;
        # answering as our own sampler gets us the epoch, so a resumed run sees the same
        # order the interrupted one would have.
        return self

    def _all_batches(self) -> list[list[int]]:
        if not self.shuffle:
            # evaluation: each rank reads every world_size-th line (every line read once)
            order = np.argsort(self.widths, kind="stable")[self.rank :: self.world_size]
            return cut_batches(order, self.widths, self.batch_size, self.max_width_sum)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.widths))
        pool = self.batch_size * BUCKET_BATCHES
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(self.widths[chunk], kind="stable")]
            batches += cut_batches(chunk, self.widths, self.batch_size, self.max_width_sum)
        batches = [batches[i] for i in rng.permutation(len(batches))]
        # training: whole batches per rank, the same count on every rank (DDP hangs otherwise)
        per_rank = len(batches) // self.world_size
        return batches[self.rank :: self.world_size][:per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._all_batches())

    def __len__(self) -> int:
        return len(self._all_batches())


class LineDataModule(L.LightningDataModule):
    def __init__(
        self,
        lines: LinesFolder,
        charset: Charset,
        height: int,
        model_frames: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int,
        augment: AugmentParams,
        seed: int,
        max_batch_pixels: int,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.lines = lines
        self.charset = charset
        self.height = height
        self.model_frames = model_frames  # widths (px) -> CTC input lengths
        self.batch_size = batch_size
        self.augment = augment
        self.seed = seed
        self.max_batch_pixels = max_batch_pixels
        self.num_workers = num_workers
        self.datasets: dict[str, LineDataset] = {}
        self.dropped_infeasible: dict[str, int] = {}

    def split_dataset(self, split: str, train: bool = False) -> LineDataset:
        augmentation = build_augmentation(self.augment) if train else None
        return LineDataset(self.lines.split(split), self.charset, self.height, augmentation)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and "train" not in self.datasets:
            self.datasets["train"] = self._feasible(
                self.split_dataset("train", train=True), "train"
            )
            self.datasets["validation"] = self.split_dataset("validation")
        if stage in ("validate",) and "validation" not in self.datasets:
            self.datasets["validation"] = self.split_dataset("validation")
        if stage in ("test", None) and "test" not in self.datasets:
            self.datasets["test"] = self.split_dataset("test")

    def _feasible(self, dataset: LineDataset, split: str) -> LineDataset:
        """Drop (and count, loudly) training lines whose text cannot fit their CTC frames:
        CTC would give them an infinite loss, and zeroing it would hide them."""
        frames = self.model_frames(torch.tensor(dataset.widths)).tolist()
        keep = [
            i for i, target in enumerate(dataset.targets) if ctc_min_frames(target) <= frames[i]
        ]
        dropped = len(dataset) - len(keep)
        self.dropped_infeasible[split] = dropped
        if dropped:
            if self.trainer is None or self.trainer.is_global_zero:  # once, not per rank
                examples = [
                    dataset.ids[i] for i in sorted(set(range(len(dataset))) - set(keep))[:3]
                ]
                log.warning(
                    "%s: dropped %d of %d lines whose text needs more CTC frames than the image "
                    "gives at %d px high (e.g. %s); lower the encoder's width strides to keep them",
                    split,
                    dropped,
                    len(dataset),
                    self.height,
                    ", ".join(examples),
                )
            dataset.keep(keep)
        return dataset

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        widths = dataset.widths
        if dataset.augmentation is not None:  # padded or stretched: count the widest it gets
            widths = [self.augment.widest_output(w, self.height) for w in widths]
        batches = WidthBucketBatches(
            widths,
            self.batch_size,
            shuffle,
            self.seed,
            rank,
            world,
            height=self.height,
            max_pixels=self.max_batch_pixels,
        )
        return DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=loader_context() if self.num_workers > 0 else None,
            worker_init_fn=functools.partial(init_worker, os.getpid(), rank),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def transfer_batch_to_device(
        self, batch: Batch, device: torch.device, dataloader_idx: int
    ) -> Batch:
        return batch.to(device)
