"""Evaluate LVIS results JSON against LVIS-format annotations (federated protocol, 300 detections per image)
and write metrics.json. Runs under Snakemake (rule evaluate) or by hand:

    python workflow_scripts/evaluate.py --annotations val.json --predictions val_pred.json --out metrics.json \
        [--iou-types bbox segm]
"""

from __future__ import annotations

import argparse
import time

from longtail_seg.data.check import check_dataset
from longtail_seg.evaluation.lvis_eval import (
    IOU_TYPES,
    LVIS_MAX_DETS_PER_IMAGE,
    evaluate_lvis,
    format_metrics_table,
    load_ground_truth,
    load_results,
    write_metrics,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, help="LVIS-format ground-truth JSON")
    parser.add_argument("--predictions", required=True, help="LVIS results JSON (list of detection dicts)")
    parser.add_argument("--out", required=True, help="metrics.json to write")
    parser.add_argument("--iou-types", nargs="+", choices=IOU_TYPES, default=list(IOU_TYPES),
                        help="IoU types to evaluate (default: bbox segm)")
    parser.add_argument("--max-dets", type=int, default=LVIS_MAX_DETS_PER_IMAGE,
                        help="detections kept per image (LVIS: 300)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    try:
        # the ground truth first: structure, records, segmentations (no images: evaluation reads none)
        check_dataset(args.annotations, role="eval", require_masks="segm" in args.iou_types, progress=False)
        results = load_results(args.predictions)
        ground_truth = load_ground_truth(args.annotations)
        metrics: dict = evaluate_lvis(ground_truth, results, args.iou_types, args.max_dets, source=args.predictions)
    except (ValueError, FileNotFoundError) as error:  # each names the file, the record and the fix
        raise SystemExit(f"evaluate: {error}") from None
    metrics["num_images"] = len(ground_truth.get_img_ids())
    metrics["num_detections"] = len(results)
    write_metrics(args.out, metrics)
    print(format_metrics_table(metrics))
    print(f"{metrics['num_detections']} detections on {metrics['num_images']} images, "
          f"evaluated in {time.perf_counter() - start:.1f}s -> {args.out}")
    return metrics


if __name__ == "__main__":
    main(parse_args())
