"""Models on the embedded test split (held-out fonts) drawn two ways: clean (the page look
off: no margins, rulings, neighbouring lines or blotchy paper) and as ``make repro`` draws
it (page look on). Shows whether a synthetic-data change costs anything on clean lines.

    python bench/teachers.py models/model.ckpt old-model.ckpt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from torchmetrics.functional.text import char_error_rate

from pipeline.data import LineDataset
from pipeline.layout import PROJECT_PARAMS, LinesFolder
from pipeline.params import load_params
from pipeline.pull import pull
from pipeline.recognizer import Recognizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", type=Path, nargs="+")
    args = parser.parse_args()
    params = load_params(PROJECT_PARAMS)
    clean = dataclasses.replace(
        params,
        synthetic=dataclasses.replace(
            params.synthetic,
            paper_texture=0.0,
            vertical_margin_max=0.0,
            ruling_probability=0.0,
            neighbour_probability=0.0,
        ),
    )
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        folders = {}
        for name, looks in (("clean", clean), ("page look", params)):
            folders[name] = LinesFolder(Path(scratch) / name.replace(" ", "-"))
            pull(looks, folders[name].root, Path(scratch) / f"{name}.json")
        for model in args.models:
            recognizer = Recognizer.load(model, device="cpu")
            for name, folder in folders.items():
                test = LineDataset(folder.split("test"), recognizer.charset, recognizer.height)
                read = recognizer.read_lines(lambda i, d=test: d[i]["image"], test.widths, ["beam"])
                texts = [reading.text for reading in read.by_decoder["beam"]]
                cer = round(float(char_error_rate(texts, test.texts)), 4)
                results[f"{model} on {name} test lines (beam CER)"] = cer
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
