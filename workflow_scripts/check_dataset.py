"""Check an LVIS/COCO annotation file and its images before training or evaluation, and write a report JSON.
Runs under Snakemake (rule check_dataset, an input of training, inference and evaluation) or by hand:

    python workflow_scripts/check_dataset.py --annotations train.json --image-root images/ --role train \
        --out report.json [--workers 8] [--executor thread]

Lists every problem in one pass (the first 20 and a count): structure and cross references, image records,
polygons and RLEs (well formed, inside their image), boxes, a training split without annotations, and every image
file decoded in full. Without --image-root only the annotations are checked. Exits non-zero, writing no report,
when anything is wrong.
"""

from __future__ import annotations

import argparse

from longtail_seg.cli import script_parser
from longtail_seg.data.check import DEFAULT_EXECUTOR, EXECUTORS, MAX_LISTED, ROLES, available_cpus, check_dataset
from longtail_seg.data.lvis_io import DatasetError
from longtail_seg.io_utils import atomic_write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--annotations", required=True, help="LVIS/COCO-format annotation JSON")
    parser.add_argument("--image-root", help="folder the image records' file names are relative to "
                                             "(default: check the annotations only)")
    parser.add_argument("--role", choices=ROLES, default="train",
                        help="train: the split must have annotations; eval: images without any are fine")
    parser.add_argument("--out", required=True, help="report JSON to write")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"image decoding workers (default: all {available_cpus()} CPUs)")
    parser.add_argument("--executor", choices=EXECUTORS, default=DEFAULT_EXECUTOR,
                        help=f"thread or process pool for decoding (default {DEFAULT_EXECUTOR})")
    parser.add_argument("--max-listed", type=int, default=MAX_LISTED,
                        help=f"problems listed in the error; the others are counted (default {MAX_LISTED})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    report = check_dataset(args.annotations, args.image_root, role=args.role, workers=args.workers,
                           executor=args.executor, max_listed=args.max_listed, progress=not args.no_progress)
    atomic_write_json(args.out, report, indent=2)
    rate = f", {report['images_per_s']} images/s with {report['workers']} {report['executor']} workers" \
        if report["images_decoded"] else ""
    print(f"{args.annotations}: OK, {report['num_images']} images, {report['num_annotations']} annotations, "
          f"{report['num_categories']} categories; {report['images_decoded']} image files decoded{rate}; "
          f"{report['seconds']:.1f}s -> {args.out}")
    return report


if __name__ == "__main__":
    try:
        main(parse_args())
    except DatasetError as error:  # the message lists every problem; a traceback would only bury it
        raise SystemExit(f"check_dataset: {error}") from None
