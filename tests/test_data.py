import functools
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from lightning.fabric.utilities.seed import pl_worker_init_function

from pipeline.charset import Charset
from pipeline.data import (
    LineDataModule,
    WidthBucketBatches,
    collate,
    ctc_min_frames,
    cut_batches,
    to_model_input,
)
from pipeline.layout import LinesFolder
from pipeline.params import padded_width
from pipeline.pull import pull
from tests.conftest import ROOT, tiny_params_dict


def test_ctc_min_frames_counts_blanks_between_repeats():
    assert ctc_min_frames([]) == 0
    assert ctc_min_frames([1, 2, 3]) == 3
    assert ctc_min_frames([1, 1, 2, 2, 2]) == 5 + 3
    assert ctc_min_frames([1, 2, 1]) == 3


def test_model_input_is_ink_one_paper_zero_at_model_height():
    image = torch.full((1, 64, 100), 255, dtype=torch.uint8)
    image[0, 20:40, 10:20] = 0
    ink = to_model_input(image, 32)
    assert ink.shape == (1, 32, 50) and ink.dtype == torch.float32
    assert ink.max() > 0.9 and ink[0, 0, 0] == 0.0


def test_collate_pads_with_paper_and_keeps_real_widths():
    items = [
        {"image": torch.ones(1, 32, w), "target": t, "text": s, "id": s, "writer": None}
        for w, t, s in [(10, [1, 2], "ab"), (25, [3], "c")]
    ]
    batch = collate(items)
    assert batch.images.shape == (2, 1, 32, 32)  # the widest, 25, rounded up to 32 px
    assert batch.widths.tolist() == [10, 25]
    assert batch.images[0, :, :, 10:].abs().sum() == 0  # padding is paper (0)
    assert batch.images[1, :, :, 25:].abs().sum() == 0
    assert batch.images[1, :, :, :25].min() == 1.0  # the line itself untouched
    assert batch.targets.tolist() == [1, 2, 3] and batch.target_lengths.tolist() == [2, 1]


def test_width_buckets_cover_every_line_once_and_reshuffle():
    widths = list(range(100, 100 + 103))
    batches = WidthBucketBatches(widths, batch_size=8, shuffle=True, seed=1)
    batches.set_epoch(0)
    first = list(batches)
    assert sorted(i for batch in first for i in batch) == list(range(103))
    assert len(first) == len(batches) == 13
    assert list(batches) == first  # the order changes only with the epoch
    batches.sampler.set_epoch(1)  # how Lightning reaches it
    assert list(batches) != first
    batches.set_epoch(0)
    assert list(batches) == first  # the same epoch gives the same order: resumable
    for batch in first:  # each batch is from one width-sorted pool: narrow spread
        assert max(widths[i] for i in batch) - min(widths[i] for i in batch) < 8 * 32


def test_width_buckets_count_the_padded_width_against_the_pixel_bound():
    # two 33 px lines are padded to 64 px each: 128 px of the bound, not 66
    assert cut_batches(np.arange(2), np.array([33, 33]), 8, max_width_sum=127) == [[0], [1]]
    assert cut_batches(np.arange(2), np.array([33, 33]), 8, max_width_sum=128) == [[0, 1]]
    assert cut_batches(np.arange(3), np.array([10, 20, 32]), 8, max_width_sum=96) == [[0, 1, 2]]


def test_width_buckets_split_across_ranks_with_equal_counts():
    widths = [100 + (i * 37) % 300 for i in range(50)]
    per_rank = [
        list(WidthBucketBatches(widths, 4, True, seed=3, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == 6  # 13 batches -> 6 each, none left hanging
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert len(seen) == len(set(seen))
    evaluation = [
        list(WidthBucketBatches(widths, 4, False, seed=3, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert sorted(i for batches in evaluation for b in batches for i in b) == list(range(50))


def _datamodule(lines, charset, height, model_frames, params) -> LineDataModule:
    """Batches of 4 and no binding memory bound: these tests are about lines, not memory."""
    return LineDataModule(
        LinesFolder(lines),
        charset,
        height,
        model_frames,
        4,
        params.augment,
        seed=0,
        max_batch_pixels=10**7,
    )


def test_infeasible_lines_are_dropped_counted_and_warned(tmp_path, tiny_params, caplog):
    pull(tiny_params, tmp_path / "lines", tmp_path / "m.json")
    charset = Charset.load(tmp_path / "lines" / "charset.json")
    # a model giving one frame per 12 px cannot fit ~7 px per character lines
    module = _datamodule(tmp_path / "lines", charset, 32, lambda widths: widths // 12, tiny_params)
    with caplog.at_level(logging.WARNING):
        module.setup("fit")
    total = tiny_params.synthetic.train_lines
    assert module.dropped_infeasible["train"] == total - len(module.datasets["train"]) > 0
    assert "needs more CTC frames" in caplog.text and f"of {total} lines" in caplog.text
    # a generous model keeps everything
    generous = _datamodule(tmp_path / "lines", charset, 32, lambda w: w, tiny_params)
    generous.setup("fit")
    assert generous.dropped_infeasible["train"] == 0 and len(generous.datasets["train"]) == total


def test_characters_outside_the_charset_are_left_out_of_targets(tmp_path, tiny_params):
    pull(tiny_params, tmp_path / "lines", tmp_path / "m.json")
    small = Charset(tuple("abcdefghijklmnopqrstuvwxyz "))
    module = _datamodule(tmp_path / "lines", small, 32, lambda w: w, tiny_params)
    module.setup("test")
    dataset = module.datasets["test"]
    assert dataset.unknown_lines > 0  # capitals and punctuation
    for text, target in zip(dataset.texts, dataset.targets, strict=True):
        assert small.decode(target) == "".join(ch for ch in text if ch in small.characters)


@pytest.mark.parametrize("train", [False, True])
def test_dataset_items_have_the_model_height(tmp_path, tiny_params, train):
    pull(tiny_params, tmp_path / "lines", tmp_path / "m.json")
    charset = Charset.load(tmp_path / "lines" / "charset.json")
    module = _datamodule(tmp_path / "lines", charset, 24, lambda w: w, tiny_params)
    dataset = module.split_dataset("train", train=train)
    item = dataset[0]
    assert item["image"].shape[-2] == 24
    assert charset.decode(item["target"]) == item["text"]


def test_batches_stay_within_the_pixel_budget_and_a_line_over_it_goes_alone():
    # height 10, budget 2,000 px: at most 200 px of padded width per batch (each batch
    # padded to a multiple of 32 px past its widest line)
    widths = [20, 30, 60, 64, 90, 100, 300]
    batches = list(WidthBucketBatches(widths, 8, False, seed=0, height=10, max_pixels=2000))
    # 3x64, 2x96, 1x128, the 300 px line alone
    assert batches == [[0, 1, 2], [3, 4], [5], [6]]
    for batch in batches[:-1]:
        assert len(batch) * padded_width(max(widths[i] for i in batch)) * 10 <= 2000
    unbounded = list(WidthBucketBatches(widths, 8, False, seed=0))
    assert unbounded == [list(range(7))]


def test_training_batches_under_a_budget_cover_every_line_once():
    widths = [100 + (i * 53) % 900 for i in range(200)]
    batches = WidthBucketBatches(widths, 16, True, seed=5, height=32, max_pixels=16 * 32 * 400)
    for epoch in (0, 1):
        batches.set_epoch(epoch)
        seen = sorted(i for batch in batches for i in batch)
        assert seen == list(range(200))
        assert len(list(batches)) == len(batches)
        for batch in batches:
            assert len(batch) * 32 * max(widths[i] for i in batch) <= 16 * 32 * 400


def test_augmented_training_batches_stay_within_the_pixel_budget(tmp_path, tiny_params):
    import dataclasses

    pull(tiny_params, tmp_path / "lines", tmp_path / "m.json")
    charset = Charset.load(tmp_path / "lines" / "charset.json")
    # every transform on every line, stretched and zoomed up to 1.5x each, sides padded:
    # lines come out wider
    augment = dataclasses.replace(
        tiny_params.augment,
        probability=1.0,
        stretch=True,
        stretch_amount=0.5,
        zoom=True,
        zoom_amount=0.5,
    )
    budget = 4 * 32 * 300  # binds: the stored lines are up to ~400 px wide at 32 px
    module = LineDataModule(
        LinesFolder(tmp_path / "lines"), charset, 32, lambda w: w, 4, augment, 0, budget
    )
    module.setup("fit")
    widest_stored = max(module.datasets["train"].widths)
    assert widest_stored * 1.5 * 1.5 + 32 > 300  # else this test would not test the bound
    torch.manual_seed(0)
    for _ in range(3):  # epochs: new draws
        for batch in module.train_dataloader():
            batch_size, _, height, width = batch.images.shape  # (B, 1, H, W)
            assert batch_size == 1 or batch_size * height * width <= budget


def test_every_ddp_rank_drops_the_infeasible_lines_and_only_rank_0_warns(
    tmp_path, tiny_params, caplog
):
    """Ranks that kept different lines would cut different batches and DDP's collectives
    would fall out of step (gloo: "Received data size doesn't match expected size")."""
    pull(tiny_params, tmp_path / "lines", tmp_path / "m.json")
    charset = Charset.load(tmp_path / "lines" / "charset.json")
    modules = {}
    for rank in (0, 1):
        module = _datamodule(tmp_path / "lines", charset, 32, lambda w: w // 12, tiny_params)
        module.trainer = SimpleNamespace(is_global_zero=rank == 0, global_rank=rank, world_size=2)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            module.setup("fit")
        modules[rank] = (module.datasets["train"].ids, "needs more CTC frames" in caplog.text)
    assert modules[0][0] == modules[1][0] and len(modules[0][0]) < tiny_params.synthetic.train_lines
    assert modules[0][1] and not modules[1][1]


def test_loader_workers_start_from_the_forkserver_and_read_what_the_process_reads(
    tmp_path, tiny_params
):
    """Workers are never forked from the (threaded) training process: CPython 3.11 can
    deadlock a child inside os.fork() then (python/cpython#112275). What they read is
    unchanged: validation batches (no augmentation) equal those read in-process."""
    pull(tiny_params, tmp_path / "lines", tmp_path / "m.json")
    charset = Charset.load(tmp_path / "lines" / "charset.json")
    batches = {}
    for workers in (0, 1):
        module = _datamodule(tmp_path / "lines", charset, 32, lambda w: w, tiny_params)
        module.num_workers, module.batch_size = workers, 1  # several batches through the queue
        module.setup("fit")
        loader = module.val_dataloader()
        if workers:
            assert loader.multiprocessing_context.get_start_method() == "forkserver"
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[1]) > 1
    for alone, worker in zip(batches[0], batches[1], strict=True):
        assert worker.ids == alone.ids
        assert torch.equal(worker.images, alone.images)
        assert torch.equal(worker.targets, alone.targets)


def test_loader_workers_are_seeded_as_lightning_seeds_them(tmp_path, tiny_params, monkeypatch):
    """seed_everything(workers=True) gives a loader Lightning's worker seeding only if it has
    no worker_init_fn; ours has one, so it must seed the same: the same augmented lines. It
    does so whatever the environment says."""
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)  # set by an earlier seed_everything
    pull(tiny_params, tmp_path / "lines", tmp_path / "m.json")
    charset = Charset.load(tmp_path / "lines" / "charset.json")
    module = _datamodule(tmp_path / "lines", charset, 32, lambda w: w, tiny_params)
    module.num_workers = 1
    module.setup("fit")
    images = {}
    for init in ("ours", "lightning", "none"):
        loader = module.train_dataloader()
        if init == "lightning":
            loader.worker_init_fn = functools.partial(pl_worker_init_function, rank=0)
        elif init == "none":
            loader.worker_init_fn = None
        torch.manual_seed(0)  # the workers' base seed is drawn from it
        images[init] = next(iter(loader)).images
    assert torch.equal(images["ours"], images["lightning"])
    assert not torch.equal(images["ours"], images["none"])  # else augmentation was not seen


# a script's datamodule on the tiny lines: `datamodule(num_workers)` (argv: lines, params)
DATAMODULE_SCRIPT = """
import sys


def datamodule(num_workers):
    import yaml
    from pipeline.charset import Charset
    from pipeline.data import LineDataModule
    from pipeline.layout import LinesFolder
    from pipeline.params import parse_params

    lines, params_file = sys.argv[1:]
    augment = parse_params(yaml.safe_load(open(params_file))).augment
    module = LineDataModule(
        LinesFolder(lines), Charset.load(lines + "/charset.json"), 32, lambda w: w, 1,
        augment, 0, 10**7, num_workers=num_workers,
    )
    module.setup("fit")
    return module
"""

LOADER_SCRIPT = """
import time
from multiprocessing import forkserver

if __name__ == "__main__":
    batches = iter(datamodule(num_workers=2).train_dataloader())
    next(batches)
    print(*[w.pid for w in batches._workers], forkserver._forkserver._forkserver_pid, flush=True)
    time.sleep(600)
"""


def _script_command(tmp_path: Path, tiny_params, script: str) -> list:
    """Pull the tiny lines and write ``script`` (after DATAMODULE_SCRIPT): its command."""
    pull(tiny_params, tmp_path / "lines", tmp_path / "m.json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict()))
    (tmp_path / "script.py").write_text(DATAMODULE_SCRIPT + script)
    return [sys.executable, tmp_path / "script.py", tmp_path / "lines", tmp_path / "params.yaml"]


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_loader_workers_and_their_server_end_when_the_training_process_is_killed(
    tmp_path, tiny_params
):
    process = subprocess.Popen(
        _script_command(tmp_path, tiny_params, LOADER_SCRIPT),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids = [int(pid) for pid in process.stdout.readline().split()]
        assert len(pids) == 3 and all(_running(pid) for pid in pids)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _running(pid)]  # two workers, then the server


EARLY_SERVER_SCRIPT = """
from multiprocessing import forkserver

import stages.train  # all `python -m stages.train` imports before it reads the params
from pipeline.loader_server import start_loader_server

if __name__ == "__main__":
    heavy = sorted({"torch", "lightning"} & set(sys.modules))
    start_loader_server()
    server = forkserver._forkserver._forkserver_pid
    batches = list(datamodule(num_workers=1).val_dataloader())
    print(heavy, forkserver._forkserver._forkserver_pid == server, len(batches), flush=True)
"""


def test_the_train_stage_can_start_the_loader_server_before_importing_torch(tmp_path, tiny_params):
    """The stage starts the workers' server before its own heavy imports, so the two import
    torch and Lightning side by side (a tiny stage run: 38-41 s before, 20-23 s after), and
    the loaders then use that server."""
    result = subprocess.run(
        _script_command(tmp_path, tiny_params, EARLY_SERVER_SCRIPT),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[] True 4"]
