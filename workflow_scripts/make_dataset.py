"""Generate an embedded synthetic long-tail dataset (LVIS format) into a folder. Runs under Snakemake (rule
make_dataset) or by hand:

    python workflow_scripts/make_dataset.py --out-dir data/demo [--seed 0] [--image-size 128]
        [--num-train 2200] [--num-val 360] [--num-unlabeled 600]
    python workflow_scripts/make_dataset.py --out-dir data/lvis_rehearsal --mode lvis --num-train 400 ...

--mode demo (default): the 192-category demo, square PNGs (OUT_DIR/images/{split}/*.png).
--mode lvis: the LVIS rehearsal's data, LVIS v1's 1203 categories at COCO's sizes
(OUT_DIR/images/{train,val,unlabeled}2017/*.jpg); it takes no --image-size.
Both write OUT_DIR/annotations/{train,val,unlabeled,unlabeled_hidden_gt}.json.
"""

from __future__ import annotations

import argparse
import time

from longtail_seg.cli import script_parser
from longtail_seg.data.lvis_io import load_json
from longtail_seg.data.synthetic import generate_dataset
from longtail_seg.data.synthetic_config import MODES
from longtail_seg.data.synthetic_lvis import generate_lvis_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--out-dir", required=True, help="dataset folder (annotations/ and images/ go inside)")
    parser.add_argument("--mode", choices=MODES, default="demo", help="demo (default) or lvis (the LVIS rehearsal)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="demo: square image side in pixels (default 128); not taken by the lvis mode")
    parser.add_argument("--num-train", type=int, default=2200, help="training images (default 2200)")
    parser.add_argument("--num-val", type=int, default=360, help="validation images (default 360)")
    parser.add_argument("--num-unlabeled", type=int, default=600, help="unlabeled images (default 600)")
    args = parser.parse_args(argv)
    if args.mode == "lvis" and args.image_size is not None:
        parser.error("--image-size: the lvis mode draws COCO's image sizes; leave the option out")
    return args


def main(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    sizes = dict(num_train=args.num_train, num_val=args.num_val, num_unlabeled=args.num_unlabeled)
    if args.mode == "lvis":
        paths = generate_lvis_dataset(args.out_dir, seed=args.seed, progress=True, **sizes)
        source = "LVIS v1's labels"
    else:
        image_size = 128 if args.image_size is None else args.image_size
        paths = generate_dataset(args.out_dir, seed=args.seed, image_size=image_size, progress=True, **sizes)
        source = "train image counts"
    train = load_json(paths["train"])
    categories = train["categories"]
    groups = {g: sum(c["frequency"] == g for c in categories) for g in "rcf"}
    in_train = sum(c["image_count"] > 0 for c in categories)
    print(
        f"wrote {args.out_dir} in {time.perf_counter() - start:.1f}s: {len(categories)} categories, {in_train} of "
        f"them in training; {groups['r']} rare / {groups['c']} common / {groups['f']} frequent ({source}); "
        f"{len(train['images'])} training images, {len(train['annotations'])} instances"
    )


if __name__ == "__main__":
    main(parse_args())
