"""The ``LightningModule``: CTC loss (+ shortcut), one shared step for train/val/test,
corpus-level CER/WER with greedy decoding, AdamW with a one-cycle schedule stepped per step.

Its hyperparameters (architecture, charset, optimizer) travel in every checkpoint, so
``load_model`` rebuilds the network with no data folder and no pickled code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.text import CharErrorRate, WordErrorRate

from pipeline.charset import BLANK_ID, Charset
from pipeline.data import Batch
from pipeline.errors import PipelineError
from pipeline.greedy import greedy_decode
from pipeline.model import CRNN, ModelConfig

MODEL_FORMAT = "htr-pipeline-crnn"
MODEL_FORMAT_VERSION = 1


class ModelFileError(PipelineError):
    pass


def text_metrics() -> MetricCollection:
    # corpus-level: edits summed over the split / reference length summed over the split
    return MetricCollection({"cer": CharErrorRate(), "wer": WordErrorRate()})


class ClampedOneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """One-cycle, holding its last value past ``total_steps`` instead of raising: an epoch
    may hold a few more batches than the first did when the memory bound cuts batches.

    With ``budget_used`` (the fraction of a time budget spent, 0 to 1), its position is the
    later of the step count and that fraction of the schedule: a run that a time cap stops
    still ends on an annealed learning rate, however fast its host."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        budget_used: Callable[[], float] | None = None,
        **one_cycle: Any,
    ) -> None:
        self.budget_used = budget_used  # read by the first step(), inside super().__init__
        super().__init__(optimizer, **one_cycle)

    def step(self, epoch: int | None = None) -> None:
        target = self.last_epoch + 1
        if self.budget_used is not None:
            target = max(target, round(self.budget_used() * (self.total_steps - 1)))
        if target <= self.total_steps - 1:
            self.last_epoch = target - 1  # super().step() advances it by one
            super().step(epoch)

    def state_dict(self) -> dict[str, Any]:
        # a clock is not state: on resume the module hands over the restored trainer's
        return {k: v for k, v in super().state_dict().items() if k != "budget_used"}


def time_budget_used(trainer: L.Trainer) -> Callable[[], float] | None:
    """The fraction of the trainer's ``max_time`` spent training so far (its ``Timer``, which
    a resumed run restores), or None without a time cap."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is None or timer.time_remaining() is None:
        return None

    cap = max(timer.time_elapsed() + timer.time_remaining(), 1e-9)  # the cap, in seconds

    def used() -> float:
        # rank 0's clock on every rank: DDP ranks must step the same learning rate
        return min(1.0, trainer.strategy.broadcast(timer.time_elapsed()) / cap)

    return used


class CRNNModule(L.LightningModule):
    def __init__(
        self,
        model_config: dict,
        charset: str,
        shortcut_weight: float,
        learning_rate: float,
        weight_decay: float,
        warmup_fraction: float,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.charset = Charset(tuple(charset))
        self.model = CRNN(ModelConfig.from_dict(model_config))
        if self.model.config.num_classes != self.charset.num_classes:
            raise ValueError(
                f"model has {self.model.config.num_classes} classes, "
                f"charset needs {self.charset.num_classes}"
            )
        self.ctc = nn.CTCLoss(blank=BLANK_ID, reduction="none", zero_infinity=False)
        self.metrics = nn.ModuleDict({"val": text_metrics(), "test": text_metrics()})

    def forward(self, images: torch.Tensor, widths: torch.Tensor | None = None) -> torch.Tensor:
        log_probs, _ = self.model(images, widths)
        return log_probs  # (T, B, K)

    def _ctc(
        self, log_probs: torch.Tensor, batch: Batch, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean per-character CTC loss over the lines with a finite loss; and how many were not."""
        losses = self.ctc(log_probs.float(), batch.targets, frames, batch.target_lengths)  # (B,)
        losses = losses / batch.target_lengths.clamp(min=1)
        finite = torch.isfinite(losses)
        # A non-finite line (its text cannot fit its frames, or a numeric blow-up) adds no
        # gradient, but is counted in the logs: never silently zeroed.
        loss = losses.masked_fill(~finite, 0.0).sum() / finite.sum().clamp(min=1)
        return loss, (~finite).sum()

    def shared_step(self, batch: Batch, stage: str) -> torch.Tensor:
        log_probs, shortcut = self.model(batch.images, batch.widths)  # (T, B, K) each
        frames = self.model.output_lengths(batch.widths)  # (B,)
        loss, nonfinite = self._ctc(log_probs, batch, frames)
        if shortcut is not None and self.hparams.shortcut_weight > 0:
            shortcut_loss, _ = self._ctc(shortcut, batch, frames)
            self.log(
                f"{stage}/shortcut_loss",
                shortcut_loss,
                batch_size=len(batch.texts),
                sync_dist=stage != "train",
            )
            loss = loss + self.hparams.shortcut_weight * shortcut_loss
        batch_size = len(batch.texts)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            batch_size=batch_size,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            sync_dist=not on_step,
        )
        self.log(
            f"{stage}/nonfinite_lines",
            nonfinite.float(),
            reduce_fx="sum",
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        if stage != "train":
            predictions = [h.text for h in greedy_decode(log_probs.detach(), frames, self.charset)]
            metrics = self.metrics[stage]
            metrics.update(predictions, batch.texts)
            self.log_dict(
                {f"{stage}/{name}": metric for name, metric in metrics.items()},
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                prog_bar=True,
            )
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )
        schedule = ClampedOneCycleLR(
            optimizer,
            budget_used=time_budget_used(self.trainer),
            max_lr=self.hparams.learning_rate,
            total_steps=max(1, int(self.trainer.estimated_stepping_batches)),
            pct_start=self.hparams.warmup_fraction,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def save_model(module: CRNNModule, path: Path) -> None:
    """A slim, self-describing model file: plain types and tensors only (weights_only-safe)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "hyper_parameters": dict(module.hparams),
        "state_dict": {k: v.detach().cpu() for k, v in module.model.state_dict().items()},
    }
    scratch = path.with_name(f".{path.name}.partial")
    torch.save(payload, scratch)
    scratch.replace(path)


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(hyper_parameters, CRNN state_dict) from a model file or a Lightning checkpoint,
    loaded with ``weights_only=True``: no pickled code runs."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such checkpoint") from None
    except Exception as error:  # truncated, tampered, not a torch file
        raise ModelFileError(
            f"{path}: not a loadable checkpoint ({type(error).__name__}: {error})"
        ) from None
    if (
        not isinstance(payload, dict)
        or "state_dict" not in payload
        or "hyper_parameters" not in payload
    ):
        raise ModelFileError(
            f"{path}: not a checkpoint of this project (no state_dict / hyper_parameters)"
        )
    state = payload["state_dict"]
    if payload.get("format") != MODEL_FORMAT:  # a Lightning checkpoint: keys are "model.<name>"
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return dict(payload["hyper_parameters"]), state


def load_model(path: Path) -> CRNNModule:
    hparams, state = read_checkpoint(path)
    try:
        module = CRNNModule(**hparams)
        module.model.load_state_dict(state)
    except (TypeError, KeyError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: checkpoint does not match the model ({error})") from None
    return module.eval()
