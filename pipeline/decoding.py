"""CTC decoders behind one call: ``decoder(log_probs (T, B, K), lengths (B,)) -> [Hypothesis]``.

- ``greedy``: best path, vectorized torch (``pipeline/greedy.py``).
- ``beam``: lexicon-free prefix beam search, torchaudio's flashlight ``ctc_decoder``.
- ``beam_lm``: the same flashlight search, scored with a character n-gram and a bonus for
  each word of the training texts (``pipeline/charlm.py``).

Both search on the CPU, also when the network ran on a GPU. torchaudio's
``cuda_ctc_decoder`` writes past its shared memory in its top-k kernel (pytorch/audio#3754,
fix in the unmerged #4198): on an H100 it aborts the process with cudaErrorIllegalAddress
(seen here with torchaudio 2.11); ``bench/gpu_check.py`` tries it in a child process and
says whether the installed torchaudio is still affected.

Class 0 is the CTC blank; class i > 0 is ``charset.characters[i - 1]``.

A beam search runs on one core, and ``beam_lm`` spends most of its time in the LM's Python
callback, so ``DecodingPool`` runs the beam searches of many batches in worker processes
(``evaluate.decode_processes``), each holding its own copy of the decoders.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol

import torch

from pipeline.charlm import CharNgram, flashlight_lm
from pipeline.charset import BLANK_ID, Charset
from pipeline.greedy import Hypothesis, greedy_decode
from pipeline.params import EvaluateParams

BLANK_TOKEN = "<blank>"
# flashlight wants a word-separator ("silence") token in the vocabulary. We add one the
# network never emits (its log-prob column is -inf), so spaces stay ordinary characters.
SILENCE_TOKEN = "<sil>"


class Decoder(Protocol):
    name: str

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]: ...

    def prior(self, text: str) -> float:
        """What the decoder adds to a text's log-probability under the network when it
        scores it: the language model's term for ``beam_lm``, 0 for the others."""
        ...


class GreedyDecoder:
    name = "greedy"

    def __init__(self, charset: Charset) -> None:
        self.charset = charset

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        return greedy_decode(log_probs, lengths, self.charset)

    def prior(self, text: str) -> float:
        return 0.0


class BeamDecoder:
    """Prefix beam search; on CPU, ``beam_size_token`` and ``beam_threshold`` prune hard
    (untuned, flashlight was ~100x slower here, shared/README.md)."""

    def __init__(
        self,
        charset: Charset,
        beam_width: int,
        beam_size_token: int,
        beam_threshold: float,
        lm: CharNgram | None = None,
        lm_weight: float = 0.0,
        lm_char_bonus: float = 0.0,
        lm_word_bonus: float = 0.0,
        depth: int = 1,
    ) -> None:
        self.charset = charset
        self.beam_width = beam_width
        self.beam_size_token = beam_size_token
        self.beam_threshold = beam_threshold
        self.lm = lm
        self.lm_weight = lm_weight
        self.lm_char_bonus = lm_char_bonus
        self.lm_word_bonus = lm_word_bonus
        self.depth = depth  # texts ``nbest`` keeps per line (flashlight's nbest)
        self.name = "beam" if lm is None else "beam_lm"
        self._flashlight = None

    def __getstate__(self) -> dict:
        # the flashlight search (and its LM callback) is rebuilt where it is unpickled
        return {**self.__dict__, "_flashlight": None}

    def _decoder(self):
        if self._flashlight is None:
            from torchaudio.models.decoder import ctc_decoder

            tokens = [BLANK_TOKEN, *self.charset.characters, SILENCE_TOKEN]
            lm = None
            if self.lm is not None:
                lm = flashlight_lm(
                    self.lm, tokens, self.lm_char_bonus, self.lm_weight, self.lm_word_bonus
                )
            self._flashlight = ctc_decoder(
                lexicon=None,
                tokens=tokens,
                lm=lm,
                lm_weight=self.lm_weight,
                nbest=self.depth,
                beam_size=self.beam_width,
                beam_size_token=self.beam_size_token or None,
                beam_threshold=self.beam_threshold,
                blank_token=BLANK_TOKEN,
                sil_token=SILENCE_TOKEN,
                log_add=True,  # sum the paths of a prefix (true prefix beam search), not max
            )
        return self._flashlight

    def prior(self, text: str) -> float:
        if self.lm is None:
            return 0.0
        return self.lm.beam_score(text, self.lm_weight, self.lm_char_bonus, self.lm_word_bonus)

    def nbest(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        """Each line's ``depth`` best texts, best first (fewer where the search found fewer):
        ``log_probs (T, B, K)``, ``lengths (B,)``."""
        time, batch, classes = log_probs.shape
        silence = torch.full((time, batch, 1), -math.inf, dtype=torch.float32)
        emissions = torch.cat([log_probs.detach().float().cpu(), silence], dim=-1)  # (T, B, K + 1)
        emissions = emissions.transpose(0, 1).contiguous()  # (B, T, K + 1): flashlight's layout
        results = self._decoder()(emissions, lengths.detach().cpu().to(torch.int32))
        silence_id = classes

        def text(tokens: torch.Tensor) -> str:
            return self.charset.decode(
                [int(i) for i in tokens if int(i) not in (silence_id, BLANK_ID)]
            )

        return [[Hypothesis(text(h.tokens), float(h.score)) for h in line] for line in results]

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        return [texts[0] for texts in self.nbest(log_probs, lengths)]


def build_decoders(
    charset: Charset, params: EvaluateParams, lm: CharNgram | None = None, depth: int = 1
) -> dict[str, Decoder]:
    """greedy and beam; and beam_lm when a language model is given. ``depth``: the texts
    the beam decoders' ``nbest`` keeps per line (their call keeps the first)."""
    beam = (params.beam_width, params.beam_size_token, params.beam_threshold)
    decoders: dict[str, Decoder] = {
        "greedy": GreedyDecoder(charset),
        "beam": BeamDecoder(charset, *beam, depth=depth),
    }
    if lm is not None:
        decoders["beam_lm"] = BeamDecoder(
            charset,
            *beam,
            lm=lm,
            lm_weight=params.lm_weight,
            lm_char_bonus=params.lm_char_bonus,
            lm_word_bonus=params.lm_word_bonus,
            depth=depth,
        )
    return decoders


# What ``decode_processes`` 0 starts at most: each process holds its own torch and LM
# (~0.3 GB), and a container may see more cores than its CPU quota lets it use
AUTO_PROCESSES_MAX = 8


def resolve_processes(requested: int) -> int:
    """Decoding processes asked for (``evaluate.decode_processes``): 0 means one per CPU
    core this process may use, at most ``AUTO_PROCESSES_MAX``."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, AUTO_PROCESSES_MAX))


# The decoders of a worker process of ``DecodingPool`` (each process its own copy)
_worker_decoders: dict[str, Decoder] = {}


def _start_worker(decoders: dict[str, Decoder]) -> None:
    torch.set_num_threads(1)  # the search is single-threaded; its few tensor ops too
    _worker_decoders.update(decoders)


def _decode_in_worker(
    name: str, log_probs: torch.Tensor, lengths: torch.Tensor
) -> tuple[list[Hypothesis], float]:
    start = time.perf_counter()
    hypotheses = _worker_decoders[name](log_probs, lengths)
    return hypotheses, time.perf_counter() - start


# What ``DecodingPool.submit`` hands back: call it for the batch's hypotheses and the
# seconds the decoder took (in whichever process ran it)
Pending = Callable[[], tuple[list[Hypothesis], float]]


class DecodingPool:
    """``decoders`` run batch by batch: the beam searches in ``processes`` worker processes
    (spawned on first use, so that no thread state of the reader is forked), the greedy
    decoder (cheap, vectorized) in the calling process. With ``processes`` 1 everything runs
    in the calling process. The texts are the same either way: each batch is decoded alone."""

    def __init__(self, decoders: dict[str, Decoder], processes: int) -> None:
        self.decoders = decoders
        self.processes = processes
        self._pooled = {name for name, d in decoders.items() if isinstance(d, BeamDecoder)}
        self._executor: ProcessPoolExecutor | None = None

    def submit(
        self, name: str, log_probs: torch.Tensor, lengths: torch.Tensor, pooled: bool = True
    ) -> Pending:
        """Decode one batch, ``log_probs (T, B, K)`` and ``lengths (B,)`` on the CPU; with
        ``pooled`` false in this process (a few lines do not pay for starting the workers)."""
        if pooled and self.processes > 1 and name in self._pooled:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=({n: self.decoders[n] for n in self._pooled},),
                )
            future = self._executor.submit(_decode_in_worker, name, log_probs, lengths)
            return future.result
        start = time.perf_counter()
        hypotheses = self.decoders[name](log_probs, lengths)
        done = hypotheses, time.perf_counter() - start
        return lambda: done

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None
