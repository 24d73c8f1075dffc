"""Ablations on real handwriting: each run is params.yaml + a few overrides, run through the
real stages (pull -> train -> evaluate) on a hub-layout folder, in a scratch folder.

    cp models/model.ckpt models/pretrained.ckpt      # after `make repro`, as `make real` does
    python bench/real.py ../shared/data/poilus-b1 --runs recipe recipe-scratch

``--teacher NAME`` first trains the teacher of TEACHERS (the embedded default pipeline,
params.yaml plus its overrides, through the same stages) and fine-tunes from it instead of
models/pretrained.ckpt: a teacher variant without editing params.yaml for a `make repro`.

Runs are named in RUNS below (dotted params keys -> values). Pulled lines are shared
between runs of the same data height. Results (validation and test CER/WER per decoder,
minutes of training) are appended to ``--out`` and printed as a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path

from _runs import (  # bench/ is on the path of its scripts
    ROOT,
    StageRunner,
    makefile_overrides,
    params_with,
    readme_recipe_overrides,
)

from pipeline.layout import LinesFolder

HUB = {"data.source": "hub", "data.max_bad_fraction": 0.05}
H64 = {"data.height": 64, "model.preset": "cpu64"}
NORM = {"model.input_norm": "contrast"}
# `make repro`'s model; `make real` copies it to models/pretrained.ckpt the same way
PRETRAINED = {"train.init_from": str(ROOT / "models" / "pretrained.ckpt")}
# The recipe as `make real` runs it now. Since cc05753 it decodes with a beam of 50
# (evaluate.beam_width); every row before, h48 and french50 included, read with 10 (each
# row records its overrides).
# Since the language model is Kneser-Ney, the recipe decodes with params.yaml's (7-gram,
# weight 0.5, bonus 1.5; REAL_RECIPE sets the 1.5 since params.yaml's default became 2.0);
# the recipe rows before set the Witten-Bell 5-gram's weight 0.5, bonus 2.0 (each row in
# results/real.json records the overrides it ran with).
# Since c0ab5c6 it reads each line at five sizes (evaluate.scales, the versions pooled; set by
# REAL_RECIPE, then params.yaml's default): every row before read each line once, as stored.
RECIPE = makefile_overrides("REAL_RECIPE")
# The recipe in one training process with early stopping (params.yaml's patience of 4 then), as
# every row up to recipe-e26-seed2 ran it (with 22 epochs until recipe-e26; results/real.json
# records each row's overrides as it ran)
ONE_PROCESS_RECIPE = {
    **RECIPE,
    "train.cpu_processes": 1,
    "train.max_epochs": 26,
    "train.early_stopping_patience": 4,
}
# params.yaml's threads when the rows up to b16-aug25 ran: torch's default (two compute
# threads here), data loaded in the training process. The default is now one thread and
# one loader process (below); these rows keep what they measured.
TORCH_THREADS = {"train.cpu_threads": 0, "train.num_workers": 0}
# The previous session's recipe, the base of most rows: batch 16, 16 epochs.
B16 = {
    **TORCH_THREADS,
    **HUB,
    **H64,
    **NORM,
    "train.max_epochs": 16,
    "evaluate.lm_weight": 0.5,
    "evaluate.lm_char_bonus": 2.0,
}
# On the 2 vCPUs: one compute thread and one data-loading process instead of two compute
# threads (bench/train_threads.py: 2.7x the training lines/s at batch 4, 1.9x at 8, 1.3x
# at 16; a second thread mostly waits on such small layers, while the loader process then
# augments the next batch during the network's step). params.yaml's default since; the
# recipe rows get it from there.
ONE_THREAD_ONE_LOADER = {"train.cpu_threads": 1, "train.num_workers": 1}
TWO_PROCESSES = {"train.cpu_processes": 2}
# another seed (new classes' initial weights, shuffling, augmentation draws)
SEED2 = {"seed": 20261125}
# BiLSTMs of 256 per direction (the teacher must have them too: see the size rows)
LSTM256 = {"model.presets.cpu64.lstm_hidden": 256}

# one row per change; each is params.yaml plus these
RUNS: dict[str, dict] = {
    "scratch32-b8-e20": {**TORCH_THREADS, **HUB, "train.batch_size": 8, "train.max_epochs": 20},
    # the command: the default params of then, 8 epochs
    "issue-baseline": {**TORCH_THREADS, **HUB, **PRETRAINED},
    "ft32-e20": {**TORCH_THREADS, **HUB, **PRETRAINED, "train.max_epochs": 20},
    "ft64-norm-e12": {**TORCH_THREADS, **HUB, **PRETRAINED, **H64, **NORM, "train.max_epochs": 12},
    "b16": {**B16, **PRETRAINED},
    "b16-scratch": B16,  # the same epochs and time, from random weights
    # b16 underfits (train loss 1.11 vs validation 1.26 per character at its end): lighter
    # augmentation, or more optimizer steps
    "b16-aug25": {**B16, **PRETRAINED, "augment.probability": 0.25},
    "b8": {**B16, **PRETRAINED, "train.batch_size": 8},
    "b8-1thread": {**B16, **PRETRAINED, "train.batch_size": 8, **ONE_THREAD_ONE_LOADER},
    "b8-1thread-e22": {
        **B16,
        **PRETRAINED,
        "train.batch_size": 8,
        **ONE_THREAD_ONE_LOADER,
        "train.max_epochs": 22,
    },
    "b4-1thread": {**B16, **PRETRAINED, "train.batch_size": 4, **ONE_THREAD_ONE_LOADER},
    "b4-1thread-e22": {
        **B16,
        **PRETRAINED,
        "train.batch_size": 4,
        **ONE_THREAD_ONE_LOADER,
        "train.max_epochs": 22,
    },
    "recipe": {**RECIPE, **PRETRAINED},  # `make real`
    "recipe-scratch": RECIPE,  # the same epochs and time, from random weights
    # fine-tuning at half the peak learning rate (the default 2e-3 was chosen on fonts)
    "recipe-lr1e-3": {**ONE_PROCESS_RECIPE, **PRETRAINED, "train.learning_rate": 1.0e-3},
    "recipe-lr3e-3": {**ONE_PROCESS_RECIPE, **PRETRAINED, "train.learning_rate": 3.0e-3},
    # fewer epochs, so that the whole schedule runs inside the cap on this machine: the same
    # result on a faster host
    "recipe-e18": {**ONE_PROCESS_RECIPE, **PRETRAINED, "train.max_epochs": 18},
    # the CTC shortcut head's share of the loss (0.1 was set on fonts)
    "recipe-shortcut0.3": {**ONE_PROCESS_RECIPE, **PRETRAINED, "model.shortcut_weight": 0.3},
    # train 0.70 vs validation 1.04 loss per character at the end: some overfitting. LSTM
    # dropout costs CPU time, so inside the cap it also means fewer steps.
    "recipe-dropout0.2": {
        **ONE_PROCESS_RECIPE,
        **PRETRAINED,
        "model.presets.cpu64.lstm_dropout": 0.2,
    },
    # the recipe again with another seed (initial weights of the new classes, shuffling,
    # augmentation draws): how far one run of it is from the next
    "recipe-seed2": {**ONE_PROCESS_RECIPE, **PRETRAINED, **SEED2},
    # train 0.70 vs validation 1.04 loss per character: each transform on 3 lines in 4
    "recipe-aug75": {**ONE_PROCESS_RECIPE, **PRETRAINED, "augment.probability": 0.75},
    # hands differ in how wide they write: the ink 0.75x to 1.25x as wide, half the lines
    "recipe-stretch": {**ONE_PROCESS_RECIPE, **PRETRAINED, "augment.stretch": True},
    # validate and keep an average of the last ~1,000 steps' weights (~2.7 epochs at batch 4)
    "recipe-ema": {**ONE_PROCESS_RECIPE, **PRETRAINED, "train.ema_decay": 0.999},
    # 48 px lines (the 32 / 48 / 64): 0.56x the encoder's pixels of 64 px, so more
    # steps in the cap; at 4 px per frame ~3.4 frames per character instead of ~4.5 ...
    "recipe-h48": {
        **ONE_PROCESS_RECIPE,
        **PRETRAINED,
        "data.height": 48,
        "model.presets.cpu64.height": 48,
    },
    # ... or at 2 px per frame (~6.7 frames per character, twice the BiLSTM's frames)
    "recipe-h48-2px": {
        **ONE_PROCESS_RECIPE,
        **PRETRAINED,
        "data.height": 48,
        "model.presets.cpu64.height": 48,
        "model.presets.cpu64.width_strides": [1, 1, 1, 1],
    },
    # The network's size. init_from needs the teacher's shape, so each of these starts from
    # a `make repro` model trained with the same change to the `cpu` preset (copied to
    # models/pretrained.ckpt). One training step at batch 4 on 64 x 900 px lines, one
    # thread: 216 ms as is, 224 ms with a third BiLSTM layer, 291 ms with two residual
    # blocks per encoder stage, 300 ms with BiLSTMs of 256, 327 ms with 1.5x the encoder's
    # channels (the cpu preset at batch 16, 32 px: 422 / 512 / 619 / 729 / 665 ms).
    "recipe-lstm3": {**ONE_PROCESS_RECIPE, **PRETRAINED, "model.presets.cpu64.lstm_layers": 3},
    "recipe-blocks2": {
        **ONE_PROCESS_RECIPE,
        **PRETRAINED,
        "model.presets.cpu64.blocks": [2, 2, 2, 2],
    },
    "recipe-lstm256": {**ONE_PROCESS_RECIPE, **PRETRAINED, **LSTM256},
    "recipe-lstm256-seed2": {**ONE_PROCESS_RECIPE, **PRETRAINED, **LSTM256, **SEED2},
    # the same from a 256-wide teacher of 6 epochs instead of 8 (train.max_epochs 6: what
    # `make repro`'s 15 minutes leave it here); its md5 tells the two teachers apart
    "recipe-lstm256-e6": {**ONE_PROCESS_RECIPE, **PRETRAINED, **LSTM256},
    "recipe-lstm256-e6-seed2": {**ONE_PROCESS_RECIPE, **PRETRAINED, **LSTM256, **SEED2},
    # from a teacher whose embedded lines join the letters of half the lines of the fonts
    # that print them apart (its `make repro` with synthetic.join_letters 0.5)
    "recipe-join50": {**ONE_PROCESS_RECIPE, **PRETRAINED},
    "recipe-join50-seed2": {**ONE_PROCESS_RECIPE, **PRETRAINED, **SEED2},
    # features averaged over the height instead of their maximum (model.column_pool), from
    # a teacher trained the same way (its `make repro` with that one change)
    "recipe-avg": {**ONE_PROCESS_RECIPE, **PRETRAINED, "model.column_pool": "avg"},
    "recipe-avg-seed2": {**ONE_PROCESS_RECIPE, **PRETRAINED, "model.column_pool": "avg", **SEED2},
    # ... and from `make repro`'s own model (maximum over the height), switched to the
    # average for fine-tuning only (same weights' shapes: no teacher of its own)
    "recipe-avg-max-teacher": {**ONE_PROCESS_RECIPE, **PRETRAINED, "model.column_pool": "avg"},
    "recipe-wide": {
        **ONE_PROCESS_RECIPE,
        **PRETRAINED,
        "model.presets.cpu64.stem_channels": 48,
        "model.presets.cpu64.widths": [48, 96, 144, 192],
    },
    # the recipe's second seed once the teacher convolves channels-last and the LM is the
    # Kneser-Ney 7-gram (beside a fresh clone's `make real` of the same commit)
    "recipe-kn-seed2": {**ONE_PROCESS_RECIPE, **PRETRAINED, **SEED2},
    # the 22 epochs now fit in 27.5 of the 30 minutes here: two more, paced by the cap
    "recipe-e24": {**ONE_PROCESS_RECIPE, **PRETRAINED, "train.max_epochs": 24},
    "recipe-e24-seed2": {**ONE_PROCESS_RECIPE, **PRETRAINED, "train.max_epochs": 24, **SEED2},
    # batch 2: twice the optimizer steps; the network alone steps ~10 % fewer lines/s (one
    # thread, 64 x 900 px: 104 ms a step of 2 against 186 of 4), but the run trained 15.1
    # lines/s against batch 4's 21.4 and the cap stopped it after 17 epochs
    "recipe-b2": {**ONE_PROCESS_RECIPE, **PRETRAINED, "train.batch_size": 2},
    "recipe-b2-seed2": {**ONE_PROCESS_RECIPE, **PRETRAINED, "train.batch_size": 2, **SEED2},
    # batches padded to a multiple of 32 px make a step ~15 % faster (bench/pad_multiple.py):
    # the 22 epochs end well inside the cap; 26 fill it
    "recipe-e26": {**ONE_PROCESS_RECIPE, **PRETRAINED},
    "recipe-e26-seed2": {**ONE_PROCESS_RECIPE, **PRETRAINED, **SEED2},
    # two DDP processes, one per core (train.cpu_processes=2; these rows ran with what it
    # sets: accelerator cpu, devices 2, strategy ddp): one thread and its loader left most of
    # the second core idle. Each process trains batches of 4, 42.6 s an epoch instead of 69:
    # 40 epochs in the cap. With early stopping (patience 4) ...
    "recipe-ddp2-e40": {
        **ONE_PROCESS_RECIPE,
        **PRETRAINED,
        **TWO_PROCESSES,
        "train.max_epochs": 40,
    },
    "recipe-ddp2-e40-seed2": {
        **ONE_PROCESS_RECIPE,
        **PRETRAINED,
        **TWO_PROCESSES,
        "train.max_epochs": 40,
        **SEED2,
    },
    # ... which stopped the second seed at epoch 31 of 40, its learning rate not yet
    # annealed: the recipe turns it off (the best epoch is kept anyway). The first seed never
    # stopped early, so recipe-ddp2-e40 is the recipe's first seed.
    "recipe-ddp2-e40-p0-seed2": {**RECIPE, **PRETRAINED, **SEED2},
    # two processes step on 8 lines where one process stepped on 4, at the same peak rate:
    # twice the rate, as the linear scaling rule would have it
    "recipe-lr4e-3": {**RECIPE, **PRETRAINED, "train.learning_rate": 4.0e-3},
    "recipe-lr4e-3-seed2": {**RECIPE, **PRETRAINED, "train.learning_rate": 4.0e-3, **SEED2},
    # the recipe from the default run trained in two processes, 12 epochs of 16 lines a step
    # (params.yaml since; a teacher reading the unseen fonts far better): `make repro`, then
    # as "recipe"
    "recipe-teacher-ddp2-e12": {**RECIPE, **PRETRAINED},
    # the augmentation's pixel sizes were set on 32 px lines: at the recipe's 64 px the
    # elastic warp (1.5 px on an 8 px grid) and the stroke change (1 px) are half as strong
    # for the letters' size; here scaled to 64 px
    "recipe-aug-x2": {
        **RECIPE,
        **PRETRAINED,
        "augment.elastic_alpha": 3.0,
        "augment.elastic_sigma": 16.0,
        "augment.morphology_kernel": 3,
    },
    # 96 px lines (32 -> 48 -> 64 px each read better): the cpu64 preset's weights at 96 px,
    # its first stage 3 px a frame across, so the same ~4.5 frames per character
    "recipe-h96": {
        **RECIPE,
        **PRETRAINED,
        "data.height": 96,
        "model.presets.cpu64.height": 96,
        "model.presets.cpu64.width_strides": [3, 1, 1, 1],
    },
    # the 4e-3 rate with the LM at weight 0.7 / bonus 2.0, which bench/lm_grid.py chose on
    # recipe-lr4e-3's two seeds' validation lines; once more, from another host's teacher.
    # (recipe-lr4e-3-lm0.7-bnfrozen in results/real.json: the same with BatchNorm frozen at
    # the teacher's statistics, a worktree change not kept)
    "recipe-lr4e-3-lm0.7": {
        **RECIPE,
        **PRETRAINED,
        "train.learning_rate": 4.0e-3,
        "evaluate.lm_weight": 0.7,
        "evaluate.lm_char_bonus": 2.0,
    },
    # (recipe-look-alike in results/real.json: the recipe with the output rows of the
    # characters the teacher lacks (é è à ç ’ œ ...) started as the row of the one each is
    # written like (é from e, its bias 3 lower), a worktree change not kept; recipe-deslanted:
    # the recipe on bench/deslanted_copy.py's copy of the lines;
    # recipe-erase: strips of the line's paper over a tenth of its width, a worktree change
    # not kept)
    # the recipe's 40 epochs doubled: on bench/subset_copy.py's half of the training lines
    # (--fraction 0.5), the same steps and minutes as the recipe on all of them
    # larger writing in a tighter crop: the line enlarged by up to 1.25x, a random band of
    # its height kept (augment.zoom); the training lines' own core heights span 0.17-0.29 of
    # the line between quartiles, and affine's scale only shrinks (by up to 0.9x)
    "recipe-zoom": {**RECIPE, **PRETRAINED, "augment.zoom": True, "augment.zoom_amount": 0.25},
    # bf16 autocast on a CPU that has bf16 instructions (AMD EPYC here: avx512_bf16): the
    # recipe's training step 1.33x as fast as fp32 here (bench/cpu_bf16.py): more steps in a cap
    "recipe-bf16": {**RECIPE, **PRETRAINED, "train.precision": "bf16-mixed"},
    "recipe-bf16-seed2": {**RECIPE, **PRETRAINED, "train.precision": "bf16-mixed", **SEED2},
    # ... which ran its 40 epochs in 24 of the 30 minutes here: the minutes left spent on
    # 50 epochs, paced by the cap
    "recipe-bf16-e50": {
        **RECIPE,
        **PRETRAINED,
        "train.precision": "bf16-mixed",
        "train.max_epochs": 50,
    },
    "recipe-bf16-e50-seed2": {
        **RECIPE,
        **PRETRAINED,
        "train.precision": "bf16-mixed",
        "train.max_epochs": 50,
        **SEED2,
    },
    "recipe-e80": {**RECIPE, **PRETRAINED, "train.max_epochs": 80},
    # ... and quadrupled, on a quarter of them (--fraction 0.25): a third point of the curve
    "recipe-e160": {**RECIPE, **PRETRAINED, "train.max_epochs": 160},
    # README's iam-gpu recipe (the reference preset at 128 px, from random weights) on these
    # lines, on a lent GPU machine; the cap only keeps the run inside one device call. (Its
    # first try, row iam-gpu-early-stopping4, stopped in CTC's blank plateau: the recipe
    # turns early stopping off since. Its committed row ran with deterministic kernels, which
    # the recipe turned off later.)
    "iam-gpu": {**readme_recipe_overrides("iam-gpu"), **HUB, "train.max_time_minutes": 5.5},
}


# Teachers: the embedded default run (params.yaml) with these overrides, trained by the
# stages as `make repro` trains it; evaluated on the embedded lines they were drawn with.
H64_TEACHER = {**H64, **NORM}  # the teacher at the recipe's height, preset and normalization
TEACHERS: dict[str, dict] = {
    "default": {},
    # 8 epochs in two processes: its step costs 1.52x the cpu preset's at 32 px, so about
    # the time of the one-try default of 12 epochs in two processes (780 s on one host)
    "h64-e8": {**H64_TEACHER, "train.max_epochs": 8},
}


def train_teacher(name: str, work: Path) -> Path:
    """The teacher's model file (trained once per work folder, then reused)."""
    run = StageRunner(work / "teachers" / name, params_with(TEACHERS[name]))
    if not run.model.exists():
        lines = run.folder / "lines"
        run.pull(lines)
        run.evaluate(lines, run.train(lines), run.lm(lines))
    return run.model


def cpuinfo(field: str) -> str | None:
    """The first processor's ``field`` in /proc/cpuinfo (``model name``, ``flags``...)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.split(":", 1)[0].strip() == field:
            return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or "unknown"


def run_one(
    name: str, overrides: dict, data: Path, work: Path, teacher: Path | None = None
) -> dict:
    if teacher is not None:
        overrides = {**overrides, "train.init_from": str(teacher)}
    params = params_with({**overrides, "data.hub_id": str(data.resolve())})
    run = StageRunner(work / name, params)
    lines = work / f"lines-h{params['data']['height']}"
    if not LinesFolder(lines).charset.exists():
        run.pull(lines)
    model = run.train(lines)
    run.evaluate(lines, model, run.lm(lines))
    return recorded(name, overrides, data, run.folder, params)


def recorded(name: str, overrides: dict, data: Path, folder: Path, params: dict) -> dict:
    """A finished run's row for results/real.json, from the files its stages wrote."""
    evaluation = json.loads((folder / "evaluate.json").read_text())
    speed = json.loads((folder / "train_speed.json").read_text())
    trained = json.loads((folder / "train.json").read_text())
    pretrained = Path(params["train"]["init_from"]) if params["train"]["init_from"] else None
    return {
        "name": name,
        "overrides": overrides,
        "data": str(data),  # a copy's folder says which bench/*_copy.py made it
        # hosts of one kind differ in speed (the 30-minute cap gives fewer steps on a slower
        # one) and in floats
        "host": cpu_model(),
        # which `make repro` model it was fine-tuned from (the teacher changes with the commit)
        "pretrained_md5": hashlib.md5(pretrained.read_bytes()).hexdigest() if pretrained else None,
        "train_minutes": round(speed["fit_seconds"] / 60, 1),
        "epochs": trained["epochs"],
        "parameters": trained["parameters"],
        # per decoder, and each line read once as stored (as_stored_<decoder>) where
        # evaluate.json has it
        **{
            f"{split}_{prefix}{decoder}_{m}": scores[m]
            for split in ("validation", "test")
            for prefix, by_decoder in (
                ("", evaluation[split]),
                ("as_stored_", evaluation[split].get("as_stored", {})),
            )
            for decoder, scores in by_decoder.items()
            if isinstance(scores, dict) and "cer" in scores
            for m in ("cer", "wer")
        },
    }


def table(results: list[dict]) -> str:
    rows = [
        "| run | val CER greedy / beam / beam+LM | test CER greedy / beam / beam+LM "
        "| test WER beam+LM | minutes | epochs |",
        "|---|---|---|---|---|---|",
    ]

    def cers(r: dict, split: str) -> str:
        return " / ".join(
            f"{r[f'{split}_{d}_cer']:.4f}" if f"{split}_{d}_cer" in r else "—"
            for d in ("greedy", "beam", "beam_lm")
        )

    for r in results:
        wer = r.get("test_beam_lm_wer", r.get("test_beam_wer", float("nan")))
        rows.append(
            f"| {r['name']} | {cers(r, 'validation')} | {cers(r, 'test')} | {wer:.3f} | "
            f"{r['train_minutes']} | {r['epochs']} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path, help="a hub-layout folder of real lines")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/htr-real"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real.json")
    parser.add_argument(
        "--tag", default="", help="appended to the run names in the results (e.g. the teacher)"
    )
    parser.add_argument(
        "--teacher",
        choices=list(TEACHERS),
        help="train this teacher first and fine-tune from it (its name tags the runs)",
    )
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    teacher = train_teacher(args.teacher, args.work) if args.teacher else None
    tag = args.tag or (f"-teacher-{args.teacher}" if args.teacher else "")
    for name in args.runs:
        result = run_one(name + tag, RUNS[name], args.data, args.work, teacher)
        results = [r for r in results if r["name"] != result["name"]] + [result]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(table([result]), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
