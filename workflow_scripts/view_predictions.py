"""The prediction viewer: val images with their ground truth next to the predictions of two (or more) models, as
one PNG (masks, boxes, class names, scores). Runs under Snakemake (rule prediction_viewer: the first and the last
row of a table) or by hand for any models:

    python workflow_scripts/view_predictions.py --annotations data/demo/annotations/val.json \
        --image-root data/demo/images --predictions results/demo/predictions/representation/single_scale.json \
        results/demo/predictions/bgs/single_scale.json --labels RFS +BGS [--image-ids 3 17] [--num-images 4] \
        [--score-threshold 0.5] --out viewer.png
"""

from __future__ import annotations

import argparse

from longtail_seg.cli import script_parser
from longtail_seg.evaluation.viewer import save_viewer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--annotations", required=True, help="LVIS-format ground truth of the predicted split")
    parser.add_argument("--image-root", required=True, help="folder the images' file names are relative to")
    parser.add_argument("--predictions", nargs="+", required=True, help="LVIS results JSON per model")
    parser.add_argument("--labels", nargs="+", required=True, help="a panel title per --predictions file")
    parser.add_argument("--image-ids", nargs="*", type=int, help="val image ids to show (default: picked)")
    parser.add_argument("--num-images", type=int, default=4, help="images picked without --image-ids "
                                                                  "(those with a rare-category annotation first)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="draw detections with this score or more")
    parser.add_argument("--out", required=True, help="PNG to write")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> list[int]:
    if len(args.labels) != len(args.predictions):
        raise SystemExit(f"view_predictions: {len(args.predictions)} --predictions but {len(args.labels)} --labels")
    try:
        shown = save_viewer(args.annotations, args.image_root, list(zip(args.labels, args.predictions)), args.out,
                            args.num_images, args.image_ids, args.score_threshold)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"view_predictions: {error}") from None
    print(f"images {shown} -> {args.out}")
    return shown


if __name__ == "__main__":
    main(parse_args())
