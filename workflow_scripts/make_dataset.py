"""Generate the embedded long-tail demo dataset (LVIS format) into a folder. Runs under Snakemake (rule
make_dataset) or by hand:

    python workflow_scripts/make_dataset.py --out-dir data/demo [--seed 0] [--image-size 128]
        [--num-train 2200] [--num-val 360] [--num-unlabeled 600]

Writes OUT_DIR/annotations/{train,val,unlabeled,unlabeled_hidden_gt}.json and OUT_DIR/images/{split}/*.png.
"""

from __future__ import annotations

import argparse
import time

from longtail_seg.data.lvis_io import load_json
from longtail_seg.data.synthetic import generate_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, help="dataset folder (annotations/ and images/ go inside)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--image-size", type=int, default=128, help="square image side in pixels (default 128)")
    parser.add_argument("--num-train", type=int, default=2200, help="training images (default 2200)")
    parser.add_argument("--num-val", type=int, default=360, help="validation images (default 360)")
    parser.add_argument("--num-unlabeled", type=int, default=600, help="unlabeled images (default 600)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    paths = generate_dataset(
        args.out_dir,
        seed=args.seed,
        image_size=args.image_size,
        num_train=args.num_train,
        num_val=args.num_val,
        num_unlabeled=args.num_unlabeled,
        progress=True,
    )
    categories = load_json(paths["train"])["categories"]
    groups = {g: sum(c["frequency"] == g for c in categories) for g in "rcf"}
    print(
        f"wrote {args.out_dir} in {time.perf_counter() - start:.1f}s: "
        f"{groups['r']} rare / {groups['c']} common / {groups['f']} frequent categories (train image counts)"
    )


if __name__ == "__main__":
    main(parse_args())
