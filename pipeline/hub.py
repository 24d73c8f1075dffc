"""Read a HuggingFace line dataset (hub id at a pinned revision, or a local folder laid out
like a hub dataset repo: ``data/{train,validation,test}-*.parquet``) with ``datasets``.

Offline, a hub id fails at once with advice, instead of a long hang and a traceback.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from pipeline.errors import PipelineError
from pipeline.lines import SPLITS, SourceRow

HUB_PROBE_TIMEOUT_S = 3.0


class HubUnavailable(PipelineError):
    pass


class SourceLayoutError(PipelineError):
    """The dataset lacks a split or a column the pipeline needs."""


def _hub_reachable() -> bool:
    import huggingface_hub.constants

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(huggingface_hub.constants.ENDPOINT).hostname or ""
    port = 443 if huggingface_hub.constants.ENDPOINT.startswith("https") else 80
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


@contextmanager
def _offline_mode() -> Iterator[None]:
    """datasets/huggingface_hub read HF_HUB_OFFLINE at import; flip their flags for one call."""
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def load_dataset_dict(hub_id: str, revision: str):
    """A ``datasets.DatasetDict`` with the splits train, validation and test."""
    import datasets

    local = Path(hub_id).expanduser()
    if local.is_dir():
        if not any(local.glob("data/*.parquet")) and not any(local.glob("*.parquet")):
            raise FileNotFoundError(
                f"{local}: no parquet files; expected data/train-*.parquet, "
                "data/validation-*.parquet and data/test-*.parquet"
            )
        dataset = datasets.load_dataset(str(local))
    elif _hub_reachable():
        dataset = datasets.load_dataset(hub_id, revision=revision)
    else:
        try:
            with _offline_mode():
                dataset = datasets.load_dataset(hub_id, revision=revision)
        except Exception as error:
            raise HubUnavailable(
                f"data.hub_id={hub_id!r} (revision {revision}): the HuggingFace hub is not "
                f"reachable and the dataset is not in the local HF cache ({type(error).__name__}). "
                "Either run once with network access (the cache then serves later offline runs), "
                "set data.hub_id to a local folder laid out like the hub repo "
                "(data/train-*.parquet, data/validation-*.parquet, data/test-*.parquet), "
                "or use the embedded default: data.source=synthetic."
            ) from None
    missing = [split for split in SPLITS if split not in dataset]
    if missing:
        raise SourceLayoutError(f"{hub_id}: missing split(s) {missing}; found {sorted(dataset)}")
    return dataset


def iter_split(dataset, split: str) -> tuple[int, Iterator[SourceRow]]:
    """(row count, rows) of one split, images as raw encoded bytes (decoded later, by us)."""
    import datasets

    table = dataset[split]
    for column in ("image", "text"):
        if column not in table.column_names:
            raise SourceLayoutError(
                f"split {split!r}: no column {column!r} (columns: {table.column_names})"
            )
    # decode=False: a corrupt image must become a counted bad row, not a crash in datasets.
    table = table.cast_column("image", datasets.Image(decode=False))
    has_id = "id" in table.column_names
    has_writer = "writer" in table.column_names

    def rows() -> Iterator[SourceRow]:
        for index, row in enumerate(table):
            image = row["image"] or {}
            writer = row["writer"] if has_writer else None
            yield SourceRow(
                name=f"{split} row {index}",
                id=str(row["id"]) if has_id else f"{split}-{index:06d}",
                image=image.get("bytes"),
                text=row["text"],
                writer=None if writer is None else str(writer),
            )

    return len(table), rows()
