"""Typed, frozen views of ``params.yaml``.

The YAML file is the single source of every value: no field here has a default, so a key
missing from the file is an error rather than a silent fallback. ``load_params`` rejects
unknown keys, missing keys and wrong types with a message naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import PipelineError

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ParamsError(PipelineError, ValueError):
    """A params file that does not match the schema; the message names file and key."""


def _require(condition: bool, key: str, message: str) -> None:
    """Range checks in ``__post_init__``; the loader adds the file name."""
    if not condition:
        raise ParamsError(f"{key}: {message}")


@dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "hub", "pages"]
    hub_id: str  # a HuggingFace dataset id, or a local folder laid out like one
    hub_revision: str  # commit, tag or branch of the hub dataset; ignored for a local folder
    pages_dir: str  # source pages: a folder of page images with ALTO or PAGE XML beside them
    pages_group_regex: str  # a page's group (writer, document): first group, on its path
    pages_split_ratio: tuple[float, ...]  # train/validation/test share of groups (no folders)
    pages_line_labels: tuple[str, ...]  # keep lines with one of these labels; () keeps all
    pages_min_chars: int  # shorter transcriptions are left out
    height: int  # every stored line is resized to this height (px), aspect ratio kept
    max_bad_fraction: float  # pull fails when more rows than this are unusable
    max_aspect_ratio: float  # a wider image (width / height) is no text line: dropped

    def __post_init__(self) -> None:
        _require(self.height >= 8, "data.height", f"must be >= 8, got {self.height}")
        _require(
            0.0 <= self.max_bad_fraction <= 1.0,
            "data.max_bad_fraction",
            f"must be in [0, 1], got {self.max_bad_fraction}",
        )
        _require(bool(self.hub_id.strip()), "data.hub_id", "must not be empty")
        _require(self.max_aspect_ratio >= 1.0, "data.max_aspect_ratio", "must be >= 1")
        _require(
            self.source != "pages" or bool(self.pages_dir.strip()),
            "data.pages_dir",
            "must name a folder of pages when data.source is pages",
        )
        try:
            re.compile(self.pages_group_regex)
        except re.error as error:
            _require(False, "data.pages_group_regex", f"not a regular expression: {error}")
        ratio = self.pages_split_ratio
        _require(
            len(ratio) == 3 and min(ratio) >= 0 and math.isclose(sum(ratio), 1.0),
            "data.pages_split_ratio",
            f"needs three shares (train, validation, test) summing to 1, got {list(ratio)}",
        )
        _require(self.pages_min_chars >= 1, "data.pages_min_chars", "must be >= 1")


@dataclass(frozen=True)
class SyntheticParams:
    train_lines: int
    validation_lines: int
    test_lines: int
    train_fonts: tuple[str, ...]  # fontpkg family names used for train and validation
    test_fonts: tuple[str, ...]  # held out: never seen in train or validation
    min_chars: int
    max_chars: int
    french_fraction: float  # share of each split's lines in French (the rest: English prose)
    render_height: int  # px of the canvas the text is drawn on, before normalization
    size_jitter: float  # relative font-size variation per line
    slant_max: float  # max |shear| (x shift per px of height)
    baseline_drift: float  # max vertical wander of words, as a fraction of the font size
    # The same three again from glyph to glyph (a smooth warp, so joined strokes stay joined):
    glyph_size_jitter: float  # relative size change, about the baseline
    glyph_slant_jitter: float  # slant change (x shift per px of height)
    glyph_baseline_jitter: float  # vertical wander, as a fraction of the font size
    # Share of lines whose letters get joined by a connecting stroke inside each word (a
    # cursive look for the fonts that print their letters apart)
    join_letters: float
    word_spacing_jitter: float  # relative variation of the space between words
    stroke_width_max: int  # px of extra stroke, drawn on the render canvas
    elastic_alpha: float  # px displacement of the elastic warp on the render canvas
    elastic_sigma: float  # px smoothness of that warp
    ink_min: int  # darkest / lightest ink grey level (0-255)
    ink_max: int
    paper_min: int  # paper grey level range (0-255)
    paper_max: int
    noise_std: float  # grey levels of Gaussian paper noise
    # What a line cut from a real page also holds (poilus-b1, IAM crops):
    paper_texture: float  # grey levels of smooth, blotchy paper variation
    vertical_margin_max: float  # up to this fraction of the height added above and below
    ruling_probability: float  # a ruled line under the text
    neighbour_probability: float  # per side: descenders/ascenders of the line above/below

    def __post_init__(self) -> None:
        for name in (
            "ruling_probability",
            "neighbour_probability",
            "french_fraction",
            "join_letters",
        ):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"synthetic.{name}", f"must be in [0, 1], got {value}")
        _require(
            0.0 <= self.vertical_margin_max <= 1.0,
            "synthetic.vertical_margin_max",
            f"must be in [0, 1], got {self.vertical_margin_max}",
        )
        _require(self.paper_texture >= 0.0, "synthetic.paper_texture", "must be >= 0")
        for name in ("glyph_size_jitter", "glyph_slant_jitter", "glyph_baseline_jitter"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"synthetic.{name}", f"must be in [0, 1), got {value}")
        for name in ("train_lines", "validation_lines", "test_lines"):
            value = getattr(self, name)
            _require(value >= 1, f"synthetic.{name}", f"must be >= 1, got {value}")
        _require(bool(self.train_fonts), "synthetic.train_fonts", "must list at least one font")
        _require(bool(self.test_fonts), "synthetic.test_fonts", "must list at least one font")
        shared = sorted(set(self.train_fonts) & set(self.test_fonts))
        _require(
            not shared,
            "synthetic.test_fonts",
            f"must be held out from train_fonts, but both list {shared}",
        )
        _require(
            1 <= self.min_chars <= self.max_chars,
            "synthetic.min_chars",
            f"need 1 <= min_chars <= max_chars, got {self.min_chars} and {self.max_chars}",
        )
        _require(self.render_height >= 16, "synthetic.render_height", "must be >= 16")
        _require(
            0 <= self.ink_min <= self.ink_max < self.paper_min <= self.paper_max <= 255,
            "synthetic.ink_min",
            "need 0 <= ink_min <= ink_max < paper_min <= paper_max <= 255",
        )


AFFINE_SIDE_PADDING = 0.5  # paper added left and right before the affine step, x the height

# Batches are padded to a multiple of this many px: a CPU convolution (oneDNN) builds its
# kernels anew for each new input shape, so widths that change from batch to batch made a
# training step of 4 lines of 350-950 px 26 % slower than one fixed width (172 against
# 136 ms); rounded to 32 px, 1-3 % slower (140 ms; bench/pad_multiple.py), for ~16 px more
# padding a batch.
PAD_WIDTH_MULTIPLE = 32


def padded_width(width: int, multiple: int = PAD_WIDTH_MULTIPLE) -> int:
    """The width (px) of a batch whose widest line is ``width`` px: what memory bounds count."""
    return -(-width // multiple) * multiple


@dataclass(frozen=True)
class AugmentParams:
    enabled: bool  # master switch: off means training sees the stored lines unchanged
    stretch: bool  # the ink wider or narrower: hands differ in how wide they write
    stretch_amount: float  # relative, e.g. 0.25 -> width x [0.75, 1.25]
    zoom: bool  # larger writing in a tighter crop: the line enlarged, its height kept
    zoom_amount: float  # relative, e.g. 0.2 -> x [1.0, 1.2], the line that much wider
    affine: bool
    affine_degrees: float
    affine_shear: float  # degrees of horizontal shear (slant)
    affine_scale: float  # relative shrink, e.g. 0.1 -> scale in [0.9, 1.0]
    perspective: bool
    perspective_distortion: float
    elastic: bool
    elastic_alpha: float  # px, largest displacement
    elastic_sigma: float  # px between nodes of the coarse displacement grid (smoothness)
    morphology: bool  # random erosion or dilation: thinner or thicker strokes
    morphology_kernel: int
    brightness_contrast: bool
    brightness: float
    contrast: float
    probability: float  # each enabled transform is applied with this probability

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.probability <= 1.0,
            "augment.probability",
            f"must be in [0, 1], got {self.probability}",
        )
        _require(
            self.morphology_kernel >= 2,
            "augment.morphology_kernel",
            f"must be >= 2, got {self.morphology_kernel}",
        )
        _require(
            0.0 <= self.perspective_distortion <= 1.0,
            "augment.perspective_distortion",
            "must be in [0, 1]",
        )
        _require(self.elastic_sigma > 0, "augment.elastic_sigma", "must be > 0")
        _require(
            0.0 <= self.stretch_amount < 1.0,
            "augment.stretch_amount",
            f"must be in [0, 1), got {self.stretch_amount}",
        )
        _require(
            0.0 <= self.zoom_amount <= 1.0,
            "augment.zoom_amount",
            f"must be in [0, 1], got {self.zoom_amount}",
        )

    def widest_output(self, width: int, height: int) -> int:
        """The widest a ``height`` x ``width`` line can come out of the augmentation: what a
        training batch's memory bound must count."""
        if self.enabled and self.stretch:
            width = max(width, round(width * (1.0 + self.stretch_amount)))
        if self.enabled and self.zoom:
            width = max(width, round(width * (1.0 + self.zoom_amount)))
        if self.enabled and self.affine:
            width += 2 * round(height * AFFINE_SIDE_PADDING)
        return width


@dataclass(frozen=True)
class PreviewParams:
    lines: int  # training lines shown, one row each
    variants: int  # augmented versions per line

    def __post_init__(self) -> None:
        _require(self.lines >= 1, "preview.lines", f"must be >= 1, got {self.lines}")
        _require(self.variants >= 1, "preview.variants", f"must be >= 1, got {self.variants}")


@dataclass(frozen=True)
class ArchitectureParams:
    """One CRNN size. Strides are per ResNet stage; the stem adds its own."""

    height: int  # px the lines are resized to (aspect kept) before the encoder
    stem_channels: int
    stem_kernel: int
    stem_stride: int
    stem_pool: bool  # a 3x3/2 max-pool after the stem (ResNet's)
    widths: tuple[int, ...]  # channels of each stage
    blocks: tuple[int, ...]  # BasicBlocks per stage
    height_strides: tuple[int, ...]
    width_strides: tuple[int, ...]  # their product (with the stem's) sets px per frame
    lstm_layers: int
    lstm_hidden: int
    lstm_dropout: float

    def __post_init__(self) -> None:
        stages = len(self.widths)
        for name in ("blocks", "height_strides", "width_strides"):
            _require(
                len(getattr(self, name)) == stages,
                f"model.presets.*.{name}",
                f"needs one entry per stage ({stages}, as widths), got {len(getattr(self, name))}",
            )
        for name in (
            "height",
            "stem_channels",
            "stem_kernel",
            "stem_stride",
            "lstm_layers",
            "lstm_hidden",
        ):
            _require(getattr(self, name) >= 1, f"model.presets.*.{name}", "must be >= 1")
        for name in ("widths", "blocks", "height_strides", "width_strides"):
            _require(
                min(getattr(self, name), default=0) >= 1,
                f"model.presets.*.{name}",
                "entries must be >= 1",
            )
        _require(
            0.0 <= self.lstm_dropout < 1.0, "model.presets.*.lstm_dropout", "must be in [0, 1)"
        )
        reduction = self.stem_stride * (2 if self.stem_pool else 1)
        for stride in self.height_strides:
            reduction *= stride
        _require(
            self.height >= reduction,
            "model.presets.*.height",
            f"{self.height} px cannot be reduced {reduction}x by the encoder's strides",
        )


@dataclass(frozen=True)
class ModelParams:
    preset: str  # a key of ``presets``
    column_pool: Literal["max", "avg"]  # how CNN features are collapsed over the height
    shortcut: bool  # the CTC shortcut head (arXiv 2404.11339)
    shortcut_weight: float  # its share of the loss
    input_norm: Literal["none", "contrast"]  # contrast: each line's paper to 0, ink to 1
    presets: dict[str, ArchitectureParams]

    def __post_init__(self) -> None:
        _require(
            self.preset in self.presets,
            "model.preset",
            f"{self.preset!r} is not one of model.presets ({', '.join(self.presets)})",
        )
        _require(self.shortcut_weight >= 0.0, "model.shortcut_weight", "must be >= 0")

    @property
    def architecture(self) -> ArchitectureParams:
        return self.presets[self.preset]


@dataclass(frozen=True)
class TrainParams:
    batch_size: int
    learning_rate: float  # peak of the one-cycle schedule (stepped every optimizer step)
    weight_decay: float
    warmup_fraction: float  # share of the steps spent warming up
    max_epochs: int
    max_time_minutes: float  # wall-clock cap on fitting (the schedule ends with it); 0 = none
    ema_decay: float  # validate and keep an exponential moving average of the weights; 0 = off
    early_stopping_patience: int  # epochs without a better val/cer; 0 = off
    gradient_clip: float  # max gradient norm; 0 = off
    precision: str  # "auto" (bf16-mixed on a GPU, 32-true on CPU) or any Lightning value
    accelerator: str  # "auto" picks the GPU when there is one
    devices: str  # "auto", a count ("2") or a list ("0,1")
    strategy: str  # "auto", "ddp", ...
    num_nodes: int
    num_workers: int  # DataLoader worker processes
    cpu_threads: int  # torch intra-op threads on CPU; 0 = torch's default
    cpu_processes: int  # training processes (DDP) when training on CPU; a GPU ignores it
    deterministic: bool  # torch deterministic algorithms (same metrics on every CPU run)
    init_from: str  # checkpoint to fine-tune from; "" trains from scratch
    max_batch_pixels: int  # padded pixels per batch (B x H x W_max): bounds a step's memory

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_epochs", "num_nodes", "max_batch_pixels", "cpu_processes"):
            _require(
                getattr(self, name) >= 1,
                f"train.{name}",
                f"must be >= 1, got {getattr(self, name)}",
            )
        for name in ("num_workers", "cpu_threads", "early_stopping_patience"):
            _require(
                getattr(self, name) >= 0,
                f"train.{name}",
                f"must be >= 0, got {getattr(self, name)}",
            )
        _require(self.learning_rate > 0, "train.learning_rate", "must be > 0")
        _require(0.0 < self.warmup_fraction < 1.0, "train.warmup_fraction", "must be in (0, 1)")
        for name in ("weight_decay", "max_time_minutes", "gradient_clip"):
            _require(getattr(self, name) >= 0, f"train.{name}", "must be >= 0")
        _require(0.0 <= self.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1)")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    beam_width: int  # hypotheses kept per frame
    beam_size_token: int  # tokens tried per frame (0: all); the main speed knob on CPU
    beam_threshold: float  # prune hypotheses this far (log-prob) below the best
    worst_lines: int  # lines shown in the worst-lines picture
    max_batch_pixels: int  # padded pixels per batch (B x H x W_max) when reading lines
    decode_processes: int  # processes for the beam searches (0: one per CPU core)
    lm_weight: float  # beam_lm: weight of the character LM's log-prob
    lm_char_bonus: float  # beam_lm: log-prob bonus per character (balances the LM's pull to short)
    lm_word_bonus: float  # beam_lm: log-prob bonus per completed word that training text holds
    # Each line read at these sizes (1.0: as stored) by every decoder, keeping per line the
    # text the versions together find likeliest (recognizer.joint_choice); (1.0,): read once
    scales: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("batch_size", "beam_width", "max_batch_pixels"):
            _require(
                getattr(self, name) >= 1,
                f"evaluate.{name}",
                f"must be >= 1, got {getattr(self, name)}",
            )
        for name in ("beam_size_token", "worst_lines", "decode_processes"):
            _require(
                getattr(self, name) >= 0,
                f"evaluate.{name}",
                f"must be >= 0, got {getattr(self, name)}",
            )
        _require(self.beam_threshold > 0, "evaluate.beam_threshold", "must be > 0")
        _require(self.lm_weight >= 0, "evaluate.lm_weight", "must be >= 0")
        _require(self.lm_word_bonus >= 0, "evaluate.lm_word_bonus", "must be >= 0")
        _require(
            1.0 in self.scales and all(0.5 <= scale <= 2.0 for scale in self.scales),
            "evaluate.scales",
            f"needs 1.0 (each line as stored) and sizes in [0.5, 2], got {list(self.scales)}",
        )


@dataclass(frozen=True)
class LmParams:
    order: int  # characters of context + 1 (5: four characters of context)

    def __post_init__(self) -> None:
        _require(self.order >= 1, "lm.order", f"must be >= 1, got {self.order}")


@dataclass(frozen=True)
class Params:
    seed: int
    data: DataParams
    synthetic: SyntheticParams
    augment: AugmentParams
    preview: PreviewParams
    model: ModelParams
    train: TrainParams
    lm: LmParams
    evaluate: EvaluateParams

    def __post_init__(self) -> None:
        # The widest line pull lets through must fit a batch on its own, at the model height,
        # in training as the augmentation may widen it, in reading at the largest size.
        height = self.model.architecture.height
        widest = math.ceil(self.data.max_aspect_ratio * height)
        largest = max(self.evaluate.scales)
        for section, width, how in (
            ("train", self.augment.widest_output(widest, height), "once augmented"),
            ("evaluate", math.ceil(widest * largest), f"read {largest:g}x as large"),
        ):
            budget = getattr(self, section).max_batch_pixels
            _require(
                budget >= padded_width(width) * height,
                f"{section}.max_batch_pixels",
                f"{budget} cannot hold the widest legal line: data.max_aspect_ratio "
                f"{self.data.max_aspect_ratio:g} x {height} px high = {widest} px"
                + (f", {width} px {how}" if width != widest else ""),
            )


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in its typed form."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping (section), got {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ParamsError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is dict:
        value_type = typing.get_args(tp)[1]
        if not isinstance(value, dict) or not value:
            raise ParamsError(f"{key}: expected a non-empty mapping, got {value!r}")
        return {str(k): _convert(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:  # written as a YAML list; stored as a tuple so params stay immutable
        item_type = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            hint = ""
            if isinstance(value, str):
                hint = " (YAML reads 5e-4 as a string: write 5.0e-4)"
            raise ParamsError(f"{key}: expected a number, got {value!r}{hint}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported annotation {tp!r}")  # a bug in this module


def _build(cls: type, mapping: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    dotted = (lambda name: f"{prefix}.{name}") if prefix else (lambda name: name)
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise ParamsError(f"{dotted(unknown[0])}: unknown key (known: {', '.join(names)})")
    missing = [name for name in names if name not in mapping]
    if missing:
        raise ParamsError(f"{dotted(missing[0])}: missing key")
    values = {name: _convert(mapping[name], hints[name], dotted(name)) for name in names}
    return cls(**values)


def parse_params(mapping: Any, source: str = "<params>") -> Params:
    """Validate an already-loaded mapping; errors are prefixed with ``source``."""
    if not isinstance(mapping, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(mapping).__name__}")
    try:
        return _build(Params, mapping, "")
    except ParamsError as error:
        raise ParamsError(f"{source}: {error}") from None


def load_params(path: Path | str = DEFAULT_PARAMS_PATH) -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root)") from None
    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    return parse_params(mapping, str(path))
