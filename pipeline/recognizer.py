"""Reading handwriting from Python: a model file in, text out. The one inference loop of the
project: ``evaluate``, ``predict``, the benchmarks and the tests all read through it.

    from pipeline.recognizer import Recognizer

    recognizer = Recognizer.load("models/model.ckpt")           # the GPU when there is one
    for reading in recognizer.read(["line.png", pil_image, numpy_array], decoder="beam"):
        print(f"{reading.confidence:.2f} {reading.text}")

Lines are batched by width (sorted, so little padding; at most ``evaluate.batch_size``
lines and ``evaluate.max_batch_pixels`` padded pixels a batch) and handed back in the order
given. Beam settings come from the ``evaluate`` section of the params (the project's
``params.yaml`` unless others are given); ``beam_lm`` needs a character LM (``lm=``).
"""

from __future__ import annotations

import io
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from pipeline.charlm import CharNgram
from pipeline.charset import Charset
from pipeline.data import WidthBucketBatches, pad_lines, to_model_input
from pipeline.decoding import Decoder, DecodingPool, Pending, build_decoders, resolve_processes
from pipeline.errors import PipelineError
from pipeline.layout import PROJECT_PARAMS
from pipeline.lines import BadRow, decode_png, normalize_image
from pipeline.lit_module import load_model
from pipeline.model import CRNN
from pipeline.params import Params, load_params

# What ``read`` takes for one line: a file path, encoded image bytes, a PIL image, or an
# array (H, W) or (H, W, C) of uint8, dark ink on light paper as scanned.
ImageInput = str | Path | bytes | Image.Image | np.ndarray


@dataclass(frozen=True)
class Reading:
    text: str
    # P(text | line) by the network (all CTC alignments), as a geometric mean per frame: the
    # same scale for every decoder (a beam_lm score carries the LM and its bonus)
    confidence: float
    # the decoder's own log score: best path (greedy), beam score (beam, beam_lm); read at
    # several sizes, the text's joint score per version (``joint_choice``)
    score: float
    frames: int  # CTC frames the network gave the line


def per_frame(log_probability: float, frames: int) -> float:
    """exp(log P / frames): 1.0 when the network is certain of every frame."""
    return math.exp(log_probability / max(frames, 1))


def text_log_likelihoods(
    log_probs: torch.Tensor, frames: torch.Tensor, texts: Sequence[str], charset: Charset
) -> list[float]:
    """log P(text | line) under the network, summed over CTC alignments: ``log_probs
    (T, B, K)`` and ``frames (B,)`` on the CPU -> one value per line."""
    targets = [torch.tensor(charset.encode_known(text), dtype=torch.long) for text in texts]
    lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    flat = torch.cat([*targets, torch.zeros(0, dtype=torch.long)])
    losses = F.ctc_loss(
        log_probs.float(), flat, frames, lengths, reduction="none", zero_infinity=False
    )  # (B,) -log P
    return (-losses).tolist()


# Lines whose versions (every size of ``evaluate.scales``) are held at once for the choice:
# about 350 kB a line at five sizes (frames x classes floats each)
LINES_PER_CHOICE = 512
# Batches decoded in worker processes and not yet collected, per process, when a reading
# keeps no emissions: bounds the log-probs waiting in memory
BATCHES_IN_FLIGHT_PER_PROCESS = 4


def joint_choice(
    versions: Sequence[tuple[Reading, torch.Tensor]], decoder: Decoder, charset: Charset
) -> Reading:
    """One line read at several sizes: each version's reading by ``decoder`` and its
    ``log_probs (T_v, K)``, the line as stored first. Of the texts read, the one kept has the
    largest log P(text | version) summed over all the versions (CTC, every alignment), plus
    the decoder's own prior (``beam_lm``: the LM's term) once per version: the versions'
    evidence pooled, which no single version's frames need to line up with. The reading's
    confidence is per frame over all the versions' frames, its score that sum over the
    versions' count, its frames the stored line's."""
    candidates = sorted({reading.text for reading, _ in versions})
    totals = [0.0] * len(candidates)
    for _, log_probs in versions:
        frames = torch.full((len(candidates),), log_probs.shape[0], dtype=torch.long)
        expanded = log_probs[:, None].expand(-1, len(candidates), -1)  # (T_v, C, K)
        for c, likelihood in enumerate(text_log_likelihoods(expanded, frames, candidates, charset)):
            totals[c] += likelihood
    scores = [
        total + len(versions) * decoder.prior(text)
        for total, text in zip(totals, candidates, strict=True)
    ]
    best = max(range(len(candidates)), key=scores.__getitem__)
    all_frames = sum(log_probs.shape[0] for _, log_probs in versions)
    return Reading(
        candidates[best],
        per_frame(totals[best], all_frames),
        scores[best] / len(versions),
        versions[0][0].frames,
    )


@dataclass(frozen=True)
class Readings:
    """Lines read by several decoders from one network pass, and the seconds of each step
    (``model``: the network; one entry per decoder). ``as_stored``: each decoder's readings
    of the line as stored, read once (with ``evaluate.scales`` beyond ``[1.0]``, the version
    the joint choice started from; else ``by_decoder`` itself), so that what the other sizes
    bought can be measured on the same pass."""

    by_decoder: dict[str, list[Reading]]
    seconds: dict[str, float]
    as_stored: dict[str, list[Reading]]


def rescaled(line: torch.Tensor, scale: float) -> torch.Tensor:
    """A model input ``(1, H, W)`` (ink 1, paper 0) with its writing ``scale`` times as
    large: ``(1, H, round(W * scale))``, cut about its middle rows, or padded there with
    paper."""
    if scale == 1.0:
        return line
    height, width = line.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(line[None], size=size, mode="bilinear", antialias=True)[0]
    if size[0] >= height:
        top = (size[0] - height) // 2
        return resized[:, top : top + height]
    top = (height - size[0]) // 2
    return F.pad(resized, (0, 0, top, height - size[0] - top), value=0.0)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Recognizer:
    def __init__(
        self,
        network: CRNN,
        charset: Charset,
        params: Params,
        device: torch.device | None = None,
        lm: CharNgram | None = None,
        decode_processes: int = 1,
    ) -> None:
        self.device = device or default_device()
        self.network = network.to(self.device).eval()
        self.charset = charset
        self.params = params
        self.decoders: dict[str, Decoder] = build_decoders(charset, params.evaluate, lm)
        # Beam searches in worker processes (0: one per core), spawned: a script that asks
        # for them needs the ``if __name__ == "__main__":`` guard, as for a DataLoader's
        # workers, so the Python API decodes in the calling process unless told otherwise.
        self._pool = DecodingPool(self.decoders, resolve_processes(decode_processes))

    @property
    def decode_processes(self) -> int:
        """Processes the beam searches run in (1: this one)."""
        return self._pool.processes

    def close(self) -> None:
        """Stop the beam searches' worker processes, if any were started."""
        self._pool.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @classmethod
    def load(
        cls,
        path: Path | str,
        device: torch.device | str | None = None,
        lm: Path | str | CharNgram | None = None,
        params: Params | Path | str = PROJECT_PARAMS,
        decode_processes: int = 1,
    ) -> Recognizer:
        """A model file written by the train stage (charset and architecture travel in it);
        ``lm``: a character LM file (``models/lm.json``) to add the ``beam_lm`` decoder;
        ``decode_processes``: worker processes for the beam searches (0: one per core; the
        stages pass ``evaluate.decode_processes``)."""
        module = load_model(Path(path))
        if not isinstance(params, Params):
            params = load_params(params)
        if lm is not None and not isinstance(lm, CharNgram):
            lm = CharNgram.load(Path(lm))
        device = torch.device(device) if device is not None else None
        return cls(module.model, module.charset, params, device, lm, decode_processes)

    @property
    def height(self) -> int:
        return self.network.config.architecture.height

    def stored_line(self, image: ImageInput) -> tuple[bytes, int]:
        """One line as the pull stage stores it: grayscale PNG at the model's height, and its
        width. Raises ``BadRow`` (``.reason``, ``.detail``) for what pull would drop too."""
        if isinstance(image, str | Path):
            try:
                image = Path(image).read_bytes()
            except OSError as error:
                raise BadRow("unreadable_file", error.strerror or str(error)) from None
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise BadRow(
                    "bad_array", f"want uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}"
                )
            image = Image.fromarray(image)
        if isinstance(image, Image.Image):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            image = buffer.getvalue()
        png, width, _ = normalize_image(image, self.height, self.params.data.max_aspect_ratio)
        return png, width

    def read(self, images: Sequence[ImageInput], decoder: str = "beam") -> list[Reading]:
        """The text of each line, in the order given. A line that cannot be read raises
        ``PipelineError`` naming it (``htr predict`` reports each and reads the others)."""
        stored = []
        for index, image in enumerate(images):
            try:
                stored.append(self.stored_line(image))
            except BadRow as error:
                name = image if isinstance(image, str | Path) else f"image {index}"
                raise PipelineError(f"{name}: {error}") from None
        return self.read_stored(stored, [decoder]).by_decoder[decoder]

    def read_stored(
        self, stored: Sequence[tuple[bytes, int]], decoders: Sequence[str], progress=None
    ) -> Readings:
        """``read_lines`` on lines as ``stored_line`` returns them (PNG, width)."""
        return self.read_lines(
            lambda i: to_model_input(decode_png(stored[i][0]), self.height),
            [width for _, width in stored],
            decoders,
            progress,
        )

    def emissions(
        self,
        line: Callable[[int], torch.Tensor],
        widths: Sequence[int],
        progress: str | None = None,
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, float]]:
        """The network on lines ``line(i)`` (prepared: ``(1, height, widths[i])``, loaded
        when their batch comes), batch by width-sorted batch: the batch's line indices, its
        ``log_probs (T, B, K)`` and ``frames (B,)`` on the recognizer's device, and the
        network's seconds."""
        batches = WidthBucketBatches(
            widths,
            self.params.evaluate.batch_size,
            shuffle=False,
            seed=0,
            height=self.height,
            max_pixels=self.params.evaluate.max_batch_pixels,
        )
        with torch.no_grad():
            for batch in tqdm(
                list(batches), desc=progress, unit="batch", disable=progress is None, mininterval=1
            ):
                images, batch_widths = pad_lines([line(i) for i in batch])  # (B, 1, H, W)
                start = time.perf_counter()
                batch_widths = batch_widths.to(self.device)
                log_probs, _ = self.network(images.to(self.device), batch_widths)  # (T, B, K)
                frames = self.network.output_lengths(batch_widths)  # (B,)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                yield batch, log_probs, frames, time.perf_counter() - start

    def read_lines(
        self,
        line: Callable[[int], torch.Tensor],
        widths: Sequence[int],
        decoders: Sequence[str],
        progress: str | None = None,
    ) -> Readings:
        """Lines ``line(i)`` read by the network and decoded by each of ``decoders``: per
        decoder, the readings in index order; and the seconds of each step (``model``, then
        one per decoder). With ``evaluate.scales`` beyond ``[1.0]``, each line is read at
        every size (``rescaled``) and each decoder reads every version; of the texts it
        found, the one kept is the likeliest under all versions together (``joint_choice``)."""
        unknown = [name for name in decoders if name not in self.decoders]
        if unknown:
            hint = " (it needs a character LM: lm=...)" if "beam_lm" in unknown else ""
            raise PipelineError(
                f"no decoder {', '.join(unknown)}{hint}; have {', '.join(self.decoders)}"
            )
        seconds: dict[str, float] = defaultdict(float)
        # the line as stored first: its frames are the ones a reading reports
        scales = (1.0, *[scale for scale in self.params.evaluate.scales if scale != 1.0])
        if scales == (1.0,):
            readings, _ = self.read_version(line, widths, decoders, seconds, progress, keep=False)()
            return Readings(readings, seconds, readings)
        found: dict[str, list] = {name: [None] * len(widths) for name in decoders}
        as_stored: dict[str, list] = {name: [None] * len(widths) for name in decoders}
        # lines in chunks, so that the versions held for the choice stay a bounded memory
        for first in range(0, len(widths), LINES_PER_CHOICE):
            chunk = range(first, min(first + LINES_PER_CHOICE, len(widths)))
            # every size read by the network before any is collected: the worker processes
            # (decode_processes) keep decoding while the network reads the next size
            pending = [  # per size: (readings by decoder, each line's log_probs) when called
                self.read_version(
                    lambda j, s=scale, c=chunk: rescaled(line(c[j]), s),
                    [max(1, round(widths[i] * scale)) for i in chunk],
                    decoders,
                    seconds,
                    progress and f"{progress} x{scale:g}",
                    keep=True,
                )
                for scale in scales
            ]
            versions = [collect() for collect in pending]
            for name in decoders:
                as_stored[name][first : first + len(chunk)] = versions[0][0][name]
                start = time.perf_counter()
                for j, index in enumerate(chunk):
                    read = [(readings[name][j], emissions[j]) for readings, emissions in versions]
                    found[name][index] = joint_choice(read, self.decoders[name], self.charset)
                seconds[name] += time.perf_counter() - start
        return Readings(found, seconds, as_stored)

    def read_version(
        self,
        line: Callable[[int], torch.Tensor],
        widths: Sequence[int],
        decoders: Sequence[str],
        seconds: dict[str, float],
        progress: str | None,
        keep: bool,
    ) -> Callable[[], tuple[dict[str, list[Reading]], list[torch.Tensor]]]:
        """One version of lines ``line(i)`` (as stored, or e.g. ``rescaled``) read once by
        the network now, its batches handed to each decoder (``DecodingPool``); call the
        result to collect them: per decoder the readings in index order, and with ``keep``
        each line's ``log_probs (T_i, K)`` on the CPU (else none), what ``joint_choice``
        pools. The seconds of each step are added to ``seconds`` (a decoder's in the
        process that ran it). Without ``keep`` the batches not yet collected stay a bounded
        number, so this call collects most of them itself."""
        readings: dict[str, list] = {name: [None] * len(widths) for name in decoders}
        emissions: list = [None] * len(widths) if keep else []
        waiting: deque = deque()  # per batch: (batch, its frames, log_probs, {decoder: pending})

        def collect(
            batch: list[int], frame_counts: list[int], cpu_log_probs, cpu_frames, pending
        ) -> None:
            for name in decoders:
                hypotheses, decode_seconds = pending[name]()
                seconds[name] += decode_seconds
                texts = [hypothesis.text for hypothesis in hypotheses]
                likelihoods = text_log_likelihoods(cpu_log_probs, cpu_frames, texts, self.charset)
                # batches are sorted by width: each reading goes back to its line's index
                for index, hypothesis, count, likelihood in zip(
                    batch, hypotheses, frame_counts, likelihoods, strict=True
                ):
                    readings[name][index] = Reading(
                        hypothesis.text, per_frame(likelihood, count), hypothesis.score, count
                    )

        in_flight = BATCHES_IN_FLIGHT_PER_PROCESS * self._pool.processes
        # one batch or less (a few lines to predict): not worth starting worker processes
        pooled = len(widths) > self.params.evaluate.batch_size
        for batch, log_probs, frames, network_seconds in self.emissions(line, widths, progress):
            seconds["model"] += network_seconds
            frame_counts = frames.tolist()
            # one copy per batch, for every decoder (the beam searches run on the CPU) and for
            # scoring their texts (a no-op on the CPU)
            cpu_log_probs, cpu_frames = log_probs.float().cpu(), frames.cpu()
            if keep:
                for b, (index, count) in enumerate(zip(batch, frame_counts, strict=True)):
                    emissions[index] = cpu_log_probs[:count, b].clone()  # (T_i, K)
            pending: dict[str, Pending] = {
                name: self._pool.submit(name, cpu_log_probs, cpu_frames, pooled)
                for name in decoders
            }
            waiting.append((batch, frame_counts, cpu_log_probs, cpu_frames, pending))
            while not keep and len(waiting) > in_flight:
                collect(*waiting.popleft())

        def finish() -> tuple[dict[str, list[Reading]], list[torch.Tensor]]:
            while waiting:
                collect(*waiting.popleft())
            return readings, emissions

        return finish
