"""Draw a grid of balanced-mosaic training samples (masks, boxes and category names): what the model sees.

    python workflow_scripts/mosaic_samples.py --train-annotations data/demo/annotations/train.json \
        --image-root data/demo/images --repeat-factors results/demo/stats/image_repeat_factors.csv \
        --mosaic-cfg '{"scale_range": [0.75, 1.25]}' --out results/demo/figures/mosaic_samples.png
"""

from __future__ import annotations

import argparse

import numpy as np

from longtail_seg.augment.pipeline import build_mosaic
from longtail_seg.augment.visualize import save_augmented_grid
from longtail_seg.cli import parse_json_object, script_parser
from longtail_seg.data.dataset import LVISDetectionDataset
from longtail_seg.data.lvis_io import load_json
from longtail_seg.sampling.repeat_factor import read_repeat_factors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--train-annotations", required=True, help="LVIS-format training annotations")
    parser.add_argument("--image-root", required=True, help="folder the images' file names are relative to")
    parser.add_argument("--repeat-factors", required=True, help="image_repeat_factors.csv (partner probabilities)")
    parser.add_argument("--mosaic-cfg", default="{}", help="JSON object: the config's augment.mosaic section")
    parser.add_argument("--num", type=int, default=16, help="samples in the grid (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="mosaic seed (default 0)")
    parser.add_argument("--out", required=True, help="PNG to write")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    dataset = LVISDetectionDataset(args.train_annotations, args.image_root, transforms=None, with_masks=True)
    factors = np.asarray(read_repeat_factors(args.repeat_factors, dataset.image_ids))
    try:
        mosaic = build_mosaic(dataset, factors, parse_json_object(args.mosaic_cfg, "--mosaic-cfg"), seed=args.seed)
    except ValueError as error:
        raise SystemExit(f"mosaic_samples: {error}") from None
    names = {c["id"]: c.get("name", str(c["id"])) for c in load_json(args.train_annotations)["categories"]}
    label_names = [names[category_id] for category_id in dataset.category_ids]
    # spread the shown samples over the dataset instead of its first images
    picks = np.linspace(0, len(mosaic) - 1, num=min(args.num, len(mosaic))).round().astype(int)
    save_augmented_grid([mosaic[int(i)] for i in picks], args.out, num=len(picks), category_names=label_names)
    print(f"{len(picks)} balanced-mosaic samples -> {args.out}")


if __name__ == "__main__":
    main(parse_args())
