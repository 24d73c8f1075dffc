"""A copy of a hub-layout folder whose training split also holds rendered lines (the embedded
dataset's renderer, params.yaml's look, French text by default), validation and test
untouched: rehearsal of the fonts while the model fine-tunes on real lines, to measure
before it enters the pipeline.

    python bench/synthetic_mix_copy.py ../shared/data/poilus-b1 /tmp/poilus-b1-mix500 --lines 500
    python bench/real.py /tmp/poilus-b1-mix500 --runs recipe --tag=-mix500 \\
        --work /tmp/htr-real-mix500        # its own --work: pulled lines are shared in one

The rendered lines' writer is ``synthetic-<font>``, so `pull`'s per-writer counts show them
apart. Their texts reach the `lm` stage with the real ones: decode the run's model with the
unmixed run's language model (``bench/lm_grid.py ... RUN/lm.json``) to compare beam+LM on the
same footing; beam and greedy do not use it.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from _runs import params_with, training_parquets  # bench/ is on the path of its scripts
from tqdm import tqdm

from pipeline.params import parse_params
from pipeline.synthetic import SyntheticError, generate_split, load_font, split_texts

# Every handwriting font installed, the held-out test fonts of the embedded dataset too:
# here they are only more hands. The embedded test split is not drawn (its font list,
# which must be held out, names one nobody reads).
FONTS = (
    "caveat",
    "dancing-script",
    "delius",
    "kalam",
    "satisfy",
    "shadows-into-light",
    "yellowtail",
    "indie-flower",
    "pacifico",
    "great-vibes",
    "zeyada",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="hub-layout folder: data/<split>*.parquet")
    parser.add_argument("target", type=Path)
    parser.add_argument("--lines", type=int, required=True, help="rendered lines to add")
    parser.add_argument("--french-fraction", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    overrides = {
        "synthetic.train_lines": args.lines,
        "synthetic.french_fraction": args.french_fraction,
    }
    params = parse_params(params_with(overrides), "params.yaml + bench overrides")
    texts = split_texts(params.synthetic, args.seed)["train"]
    drawn = "".join(sorted(set("".join(texts))))
    fonts = []
    for font in FONTS:
        try:
            load_font(font, drawn)
        except SyntheticError as error:
            print(f"{font}: left out ({error})")
            continue
        fonts.append(font)
    synthetic = replace(
        params.synthetic, train_fonts=tuple(fonts), test_fonts=("permanent-marker",)
    )

    for path, out in training_parquets(args.source, args.target):
        table = pq.read_table(path)
        rendered = tqdm(
            generate_split(synthetic, args.seed, "train", texts),
            total=len(texts),
            desc="rendering",
            unit="line",
        )
        # columns the source has and these rows lack are left empty
        added = pa.Table.from_pylist(
            [
                {
                    "image": {"bytes": row.image, "path": None},
                    "text": row.text,
                    "writer": f"synthetic-{row.writer}",
                    "id": f"synthetic-{row.id}",
                }
                for row in rendered
            ],
            schema=table.schema,
        )
        pq.write_table(pa.concat_tables([table, added]), out)
        print(f"{path.name}: {table.num_rows} real + {added.num_rows} rendered lines, {fonts}")


if __name__ == "__main__":
    main()
