"""Training machinery: fit the CRNN on a lines folder, resumably, and export the best weights.

``train`` writes the model file, the DVCLive curves, the quality metrics and the speed
metrics. Checkpoints go to a folder kept between runs: an interrupted run continues from
``last.ckpt``, provided the params, data and training code are the ones it started with
(``run_fingerprint``); otherwise training starts afresh. Fine-tuning (``train.init_from``)
starts from a checkpoint's weights, its charset extended by the data's new characters.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import logging
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
import yaml
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.strategies import DDPStrategy

from pipeline.charset import Charset
from pipeline.codebase import project_imports
from pipeline.data import LineDataModule
from pipeline.errors import PipelineError
from pipeline.layout import LinesFolder
from pipeline.lines import atomic_write_text
from pipeline.lit_module import CRNNModule, read_checkpoint, save_model
from pipeline.model import CRNN, ModelConfig
from pipeline.params import Params

log = logging.getLogger(__name__)

# The training process's code: a resumed run must share it with the interrupted one.
TRAINING_ENTRY = "stages.train"


@dataclass(frozen=True)
class TrainOutputs:
    model: Path  # models/model.ckpt: the best weights, self-describing
    checkpoints: Path  # models/checkpoints: kept between runs, for resuming
    live: Path  # dvclive/: the curves
    metrics: Path  # metrics/train.json
    speed: Path  # metrics/train_speed.json


FINGERPRINT_KEY = "htr_run_fingerprint"


def run_fingerprint(params: Params, lines: LinesFolder) -> str:
    """What a resumed run must share with the interrupted one: the params that shape
    training, the exact data, and the training code (a changed model must not load old
    weights). Only the files the training process imports count: editing the evaluation
    or report code keeps a run resumable."""
    digest = hashlib.sha256()
    shaping = {
        "seed": params.seed,
        "augment": asdict(params.augment),
        "model": asdict(params.model),
        "train": asdict(params.train),
    }
    digest.update(json.dumps(shaping, sort_keys=True, default=list).encode())
    for path in (lines.charset, lines.split("train"), lines.split("validation")):
        digest.update(path.read_bytes())
    for source in sorted(project_imports(TRAINING_ENTRY)):
        digest.update(f"{source.parent.name}/{source.name}".encode() + source.read_bytes())
    return digest.hexdigest()


class RunFingerprint(Callback):
    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[FINGERPRINT_KEY] = self.fingerprint


class SpeedMeter(Callback):
    """Wall time of training batches (not validation) and lines seen by all processes:
    train lines/s."""

    def __init__(self) -> None:
        self.lines = 0
        self.train_seconds = 0.0
        self.epoch_seconds: list[float] = []
        self._batch_start = 0.0
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_seconds += time.perf_counter() - self._batch_start
        self.lines += len(batch.texts)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)

    def on_train_end(self, trainer, pl_module) -> None:
        # DDP: each process counted its own batches; the ranks step together
        lines = torch.tensor(self.lines, dtype=torch.float64, device=pl_module.device)
        self.lines = round(float(trainer.strategy.reduce(lines, reduce_op="sum")))


class InterruptNotice(Callback):
    """Ctrl-C: Lightning shuts down and exits 1; say what is kept and how to go on."""

    def __init__(self, checkpoint_dir: Path, model_path: Path) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.model_path = model_path

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            last = self.checkpoint_dir / LAST_CHECKPOINT
            where = (
                f"from {last} (epoch {trainer.current_epoch})"
                if last.exists()
                else "from the start"
            )
            print(
                f"[train] interrupted: {self.model_path} was not written; the next "
                f"`dvc repro` resumes {where}",
                file=sys.stderr,
            )


class StallWatchdog(Callback):
    """A run that stops making progress says where it is stuck: when no training or
    validation batch has started or ended for ``seconds``, this rank prints every thread's
    Python stack to stderr (once per stall). With several processes a stalled rank leaves
    the others waiting in a collective until the process group's timeout (``DDP_TIMEOUT``)
    fails the run; these stacks tell which rank waited for what."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last_progress = time.monotonic()
        self._reported = False
        self._rank = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _progress(self, *_args) -> None:
        self._last_progress = time.monotonic()
        self._reported = False

    def _watch(self) -> None:
        while not self._stop.wait(min(self.seconds, 10.0)):
            stalled = time.monotonic() - self._last_progress
            if stalled >= self.seconds and not self._reported:
                self._reported = True
                print(
                    f"[train] rank {self._rank}: no batch started or ended for {stalled:.0f} s; "
                    "its threads' stacks follow",
                    file=sys.stderr,
                    flush=True,
                )
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._rank = trainer.global_rank
        self._progress()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self._thread.start()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    on_train_batch_start = on_train_batch_end = _progress
    on_validation_batch_start = on_validation_batch_end = _progress


# Silence between two batches that means a stalled run (a CPU step of the reference preset
# at 128 x 1000 px takes ~10 s; a checkpoint a few).
STALL_SECONDS = 300.0
# How long a DDP rank waits in a collective before the run fails: torch's default is 30
# min, which a hung CI job spent doing nothing (stall stacks come at STALL_SECONDS).
DDP_TIMEOUT = timedelta(minutes=10)


FINISHED_MARKER = "finished.json"
LAST_CHECKPOINT = "last.ckpt"  # rewritten after every validation; a resume starts from it


def resume_checkpoint(checkpoint_dir: Path, fingerprint: str) -> Path | None:
    """``last.ckpt`` of an interrupted run with these params and data, else None (and the
    folder is cleared: a finished run, or one of other params, is not continued)."""
    last = checkpoint_dir / LAST_CHECKPOINT
    if (checkpoint_dir / FINISHED_MARKER).exists():
        log.info("the previous run finished: training starts afresh")
        shutil.rmtree(checkpoint_dir)
        return None
    if not last.exists():
        return None
    try:
        saved = torch.load(last, map_location="cpu", weights_only=True).get(FINGERPRINT_KEY)
    except Exception as error:  # a truncated file from a killed run
        log.warning("ignoring %s (%s): training starts afresh", last, error)
        saved = None
    if saved == fingerprint:
        log.info("resuming the interrupted run from %s", last)
        return last
    if saved is not None:
        log.info("%s belongs to other params or data: training starts afresh", last)
    shutil.rmtree(checkpoint_dir)
    return None


def configure_threads(params: Params) -> None:
    if params.train.cpu_threads:
        torch.set_num_threads(params.train.cpu_threads)


def model_config(params: Params, num_classes: int) -> ModelConfig:
    """The network the ``model`` params describe, for ``num_classes`` outputs."""
    return ModelConfig(
        architecture=params.model.architecture,
        column_pool=params.model.column_pool,
        shortcut=params.model.shortcut,
        input_norm=params.model.input_norm,
        num_classes=num_classes,
    )


def build_module(params: Params, data_charset: Charset) -> CRNNModule:
    """A fresh module, or one initialized from ``train.init_from`` (charset extended if the
    new data brings characters the checkpoint lacks)."""
    hparams = {
        "shortcut_weight": params.model.shortcut_weight,
        "learning_rate": params.train.learning_rate,
        "weight_decay": params.train.weight_decay,
        "warmup_fraction": params.train.warmup_fraction,
    }
    if not params.train.init_from:
        config = model_config(params, data_charset.num_classes)
        charset = "".join(data_charset.characters)
        return CRNNModule(model_config=config.to_dict(), charset=charset, **hparams)

    source = Path(params.train.init_from)
    saved, state = read_checkpoint(source)
    old_charset = Charset(tuple(saved["charset"]))
    charset = old_charset.extended(data_charset.characters)
    added = charset.characters[len(old_charset.characters) :]
    saved_config = ModelConfig.from_dict(saved["model_config"])
    # The architecture is the params' (height, strides, input normalization may differ from
    # the checkpoint's); the weights are the checkpoint's, so their shapes must fit.
    config = model_config(params, saved_config.num_classes)
    network = CRNN(config)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        detail = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise PipelineError(
            f"train.init_from: the weights of {source} do not fit model.preset="
            f"{params.model.preset} ({detail}); fine-tune with channels, blocks, LSTM size "
            f"and shortcut as the checkpoint has them (height and strides may differ)"
        ) from None
    if config != saved_config:
        log.info(
            "fine-tuning %s with the architecture of model.preset=%s", source, params.model.preset
        )
    if added:
        log.warning(
            "the data has %d character(s) the checkpoint lacks: %r; "
            "output layer extended from %d to %d classes",
            len(added),
            "".join(added),
            config.num_classes,
            charset.num_classes,
        )
        network.extend_classes(charset.num_classes)
    module = CRNNModule(
        model_config=network.config.to_dict(), charset="".join(charset.characters), **hparams
    )
    module.model.load_state_dict(network.state_dict())
    log.info("initialized from %s", source)
    return module


def datamodule_for(params: Params, module: CRNNModule, lines: LinesFolder) -> LineDataModule:
    """The training data as ``module``'s network reads it: its charset, height and frames."""
    return LineDataModule(
        lines=lines,
        charset=module.charset,
        height=module.model.config.architecture.height,
        model_frames=module.model.output_lengths,
        batch_size=params.train.batch_size,
        augment=params.augment,
        seed=params.seed,
        max_batch_pixels=params.train.max_batch_pixels,
        num_workers=params.train.num_workers,
    )


# The summaries DVCLive rewrites in place and reads back on resume (its step, its params),
# each with its parser.
LIVE_SUMMARIES: dict[str, Callable[[str], object]] = {
    "metrics.json": json.loads,
    "params.yaml": yaml.safe_load,
}


def drop_unreadable_live_summaries(live: Path) -> None:
    """A run killed while DVCLive rewrote a summary leaves it empty or cut short, and
    DVCLive's resume would fail on it: remove it. Nothing is lost: the resumed run writes it
    again at its next step, and the curves (``plots/``) are kept."""
    for name, parse in LIVE_SUMMARIES.items():
        path = live / name
        if not path.exists():
            continue
        try:
            readable = isinstance(parse(path.read_text(encoding="utf-8")), dict)
        except (ValueError, yaml.YAMLError):  # JSONDecodeError and UnicodeDecodeError too
            readable = False
        if not readable:
            log.warning("%s is unreadable (a run killed while writing it): removed", path)
            path.unlink()


def trains_on_cuda(params: Params) -> bool:
    return torch.cuda.is_available() and params.train.accelerator in ("auto", "gpu", "cuda")


def devices_for(params: Params) -> dict:
    """Lightning's accelerator, devices and strategy: the params' own, except on CPU with
    ``cpu_processes`` > 1, where that many DDP processes share the cores."""
    if params.train.cpu_processes > 1 and not trains_on_cuda(params):
        return {
            "accelerator": "cpu",
            "devices": params.train.cpu_processes,
            "strategy": DDPStrategy(process_group_backend="gloo", timeout=DDP_TIMEOUT),
        }
    return {
        "accelerator": params.train.accelerator,
        "devices": params.train.devices,
        "strategy": params.train.strategy,
    }


def precision_for(params: Params) -> str:
    if params.train.precision != "auto":
        return params.train.precision
    return "bf16-mixed" if trains_on_cuda(params) and torch.cuda.is_bf16_supported() else "32-true"


def determinism_for(params: Params, on_cuda: bool) -> bool | str:
    """Lightning's ``deterministic``. CUDA has no deterministic CTC loss backward (it adds
    with atomics), so on a GPU every other op stays deterministic and that one only warns:
    GPU runs repeat to a few last digits, CPU runs bit for bit."""
    if params.train.deterministic and on_cuda:
        return "warn"
    return params.train.deterministic


def train(params: Params, lines: LinesFolder, outputs: TrainOutputs) -> dict | None:
    """Fit, export the best checkpoint and write the metrics. Returns the metrics (rank 0)."""
    configure_threads(params)
    L.seed_everything(params.seed, workers=True, verbose=False)
    checkpoint_dir = outputs.checkpoints
    data_charset = Charset.load(lines.charset)
    module = build_module(params, data_charset)
    datamodule = datamodule_for(params, module, lines)

    fingerprint = run_fingerprint(params, lines)
    resume = resume_checkpoint(checkpoint_dir, fingerprint)
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor="val/cer",
        mode="min",
        auto_insert_metric_name=False,
    )
    # Lightning 2.6's save_last writes last.ckpt only where a best one is written: a resume
    # would go back to the last improvement. This one is rewritten after every validation.
    latest = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=Path(LAST_CHECKPOINT).stem,
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
    )
    speed = SpeedMeter()
    callbacks: list[Callback] = [
        best,
        latest,
        RunFingerprint(fingerprint),
        LearningRateMonitor("step"),
        speed,
        InterruptNotice(checkpoint_dir, outputs.model),
        StallWatchdog(STALL_SECONDS),
    ]
    if params.train.ema_decay:
        callbacks.append(EMAWeightAveraging(decay=params.train.ema_decay))
    if params.train.early_stopping_patience:
        callbacks.append(
            EarlyStopping("val/cer", patience=params.train.early_stopping_patience, mode="min")
        )
    if resume is not None:
        drop_unreadable_live_summaries(outputs.live)
    logger = DVCLiveLogger(
        dir=str(outputs.live), dvcyaml=False, save_dvc_exp=False, resume=resume is not None
    )
    max_time = (
        timedelta(minutes=params.train.max_time_minutes) if params.train.max_time_minutes else None
    )
    trainer = L.Trainer(
        **devices_for(params),
        num_nodes=params.train.num_nodes,
        precision=precision_for(params),
        max_epochs=params.train.max_epochs,
        max_time=max_time,
        gradient_clip_val=params.train.gradient_clip or None,
        deterministic=determinism_for(params, trains_on_cuda(params)),
        logger=logger,
        callbacks=callbacks,
        use_distributed_sampler=False,  # the width-bucket batch sampler splits by rank itself
        log_every_n_steps=10,
        enable_model_summary=True,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    if not trainer.is_global_zero:
        return None

    best_path = (
        Path(best.best_model_path) if best.best_model_path else checkpoint_dir / LAST_CHECKPOINT
    )
    _, state = read_checkpoint(best_path)
    module.model.load_state_dict(state)
    save_model(module.cpu(), outputs.model)

    def score(key: str) -> float | None:
        value = trainer.callback_metrics.get(key)
        return None if value is None else round(float(value), 6)

    metrics = {
        "val": {
            "cer": round(float(best.best_model_score), 6)
            if best.best_model_score is not None
            else score("val/cer"),
            "wer_last": score("val/wer"),
            "cer_last": score("val/cer"),
        },
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "dropped_infeasible_lines": datamodule.dropped_infeasible.get("train", 0),
    }
    device = (
        "cuda"
        if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda"
        else "cpu"
    )
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    epochs_run = len(speed.epoch_seconds)
    speed_metrics = {
        "device": device,
        "precision": str(trainer.precision),
        "processes": trainer.world_size,  # DDP: one per device
        "threads": torch.get_num_threads(),  # per process
        "fit_seconds": round(time.perf_counter() - started, 1),
        "epochs_this_run": epochs_run,  # fewer than "epochs" when the run resumed
        "seconds_per_epoch": round(sum(speed.epoch_seconds) / epochs_run, 1)
        if epochs_run
        else None,
        "train_lines": speed.lines,  # all processes, this run
        "train_lines_per_second": round(speed.lines / speed.train_seconds, 1)
        if speed.train_seconds
        else None,
        "peak_memory_mb": round(peak_mb),
    }
    atomic_write_text(outputs.metrics, json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(outputs.speed, json.dumps(speed_metrics, indent=2) + "\n")
    # Only now is the run complete: a later run (say `dvc repro --force`) starts afresh.
    atomic_write_text(
        checkpoint_dir / FINISHED_MARKER, json.dumps({"fingerprint": fingerprint}) + "\n"
    )
    log.info("best val/cer %s; model written to %s", metrics["val"]["cer"], outputs.model)
    return metrics
