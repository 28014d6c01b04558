"""Pseudo labels: run a teacher on the unlabeled images, keep confident detections on images with a rare category.

    python workflow_scripts/pseudo_labels.py --teacher results/demo/models/mosaic_double/model_final.pth \
        --unlabeled data/demo/annotations/unlabeled.json --image-root data/demo/images \
        --train-annotations data/demo/annotations/train.json --category-stats results/demo/stats/category_stats.csv \
        --test-cfg '{"min_size": 128, "max_size": 240}' --score-threshold 0.8 \
        --out results/demo/pseudo/pseudo_labels.json --summary results/demo/pseudo/summary.json

Or from an existing predictions file instead of a teacher (--predictions teacher_predictions.json). Writes an
LVIS-format file of the kept images with their pseudo labels (boxes, categories, RLE masks, scores) and a summary
(images kept, labels per frequency group).
"""

from __future__ import annotations

import argparse

from longtail_seg.cli import parse_json_object, script_parser
from longtail_seg.data.lvis_io import DatasetError, load_json, load_lvis
from longtail_seg.inference.config import TestConfig
from longtail_seg.inference.run import predict_annotation_file
from longtail_seg.io_utils import atomic_write_json
from longtail_seg.pseudo_labels import (
    DEFAULT_SCORE_THRESHOLD,
    filter_pseudo_labels,
    pseudo_label_dataset,
    pseudo_label_summary,
    read_frequency_groups,
    uncertain_regions,
)
from longtail_seg.runtime import resolve_device, set_torch_threads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--teacher", help="model_final.pth of the teacher (the best retrained model)")
    source.add_argument("--predictions", help="LVIS results JSON of the teacher on the unlabeled images")
    parser.add_argument("--unlabeled", required=True, help="LVIS/COCO JSON listing the unlabeled images")
    parser.add_argument("--image-root", required=True, help="folder the unlabeled images' file names are relative to")
    parser.add_argument("--train-annotations", required=True, help="training annotations (the category records)")
    parser.add_argument("--category-stats", required=True, help="category_stats.csv (frequency group per category)")
    parser.add_argument("--test-cfg", default="{}", help="JSON object: the teacher's test setting (a `tests:` entry)")
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                        help=f"keep detections with score >= this (default {DEFAULT_SCORE_THRESHOLD})")
    parser.add_argument("--class-agnostic-nms", type=float, default=None, metavar="IOU",
                        help="one label per object: drop labels overlapping a higher-scored one of any class by more "
                             "than IOU (default: off)")
    parser.add_argument("--ignore-threshold", type=float, default=None,
                        help="on kept images, detections with this <= score < --score-threshold become ignore regions "
                             "(iscrowd annotations; neither object nor background in retraining). Default: none")
    parser.add_argument("--keep-all-images", action="store_true",
                        help="keep every image with a pseudo label (default: only images with a rare-category label)")
    parser.add_argument("--out", required=True, help="LVIS JSON of the pseudo-labelled images to write")
    parser.add_argument("--summary", required=True, help="summary JSON to write")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    set_torch_threads(args.threads)
    try:
        frequency_of = read_frequency_groups(args.category_stats)
        unlabeled = load_lvis(args.unlabeled, image_root=args.image_root, require_annotations=False)
        categories = load_json(args.train_annotations)["categories"]
    except DatasetError as error:
        raise SystemExit(f"pseudo_labels: {error}") from None
    if args.ignore_threshold is not None and not 0.0 <= args.ignore_threshold <= args.score_threshold:
        raise SystemExit(f"--ignore-threshold {args.ignore_threshold} must be in [0, --score-threshold "
                         f"{args.score_threshold}]")
    lowest_score = args.score_threshold if args.ignore_threshold is None else args.ignore_threshold
    if args.teacher:
        try:
            cfg = TestConfig.from_dict(parse_json_object(args.test_cfg, "--test-cfg"))
        except ValueError as error:
            raise SystemExit(f"--test-cfg: {error}") from None
        predictions, num_images, elapsed = predict_annotation_file(
            args.teacher, args.unlabeled, args.image_root, cfg, resolve_device(args.device),
            score_threshold=lowest_score, category_stats=args.category_stats,  # a test's norcal_gamma reads it
        )
        print(f"teacher {args.teacher}: {len(predictions)} detections with score >= {lowest_score} on "
              f"{num_images} images in {elapsed:.1f}s", flush=True)
    else:
        predictions = load_json(args.predictions)
        if not isinstance(predictions, list):
            raise SystemExit(f"{args.predictions}: expected a JSON list of LVIS results")
    rare_only = not args.keep_all_images
    try:
        kept = filter_pseudo_labels(predictions, frequency_of, args.score_threshold, rare_only,
                                    args.class_agnostic_nms)
        ignore = None
        if args.ignore_threshold is not None:
            ignore = uncertain_regions(predictions, kept, frequency_of, args.ignore_threshold,
                                       args.class_agnostic_nms if args.class_agnostic_nms is not None else 0.5)
        dataset = pseudo_label_dataset(kept, unlabeled, categories, ignore)
    except DatasetError as error:
        raise SystemExit(f"pseudo_labels: {error}") from None
    summary = pseudo_label_summary(dataset, len(unlabeled["images"]), frequency_of, args.score_threshold, rare_only)
    summary["class_agnostic_nms_iou"] = args.class_agnostic_nms
    summary["ignore_threshold"] = args.ignore_threshold
    atomic_write_json(args.out, dataset)
    atomic_write_json(args.summary, summary, indent=2)
    print(f"kept {summary['images_kept']} of {summary['unlabeled_images']} images, {summary['labels']} pseudo labels "
          f"{summary['labels_per_group']}, {summary['ignore_regions']} ignore regions -> {args.out}", flush=True)
    return summary


if __name__ == "__main__":
    main(parse_args())
