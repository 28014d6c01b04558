"""Evaluate LVIS results JSON against LVIS-format annotations (federated protocol, 300 detections per image)
and write metrics.json. Runs under Snakemake (rule evaluate) or by hand:

    python workflow_scripts/evaluate.py --annotations val.json --predictions val_pred.json --out metrics.json \
        [--iou-types bbox segm] [--checked results/demo/checks/val.json] \
        [--protocol standard|fixed|boundary|challenge2021] [--dets-per-category 10000] \
        [--out-per-category per_category.csv] [--out-errors errors.json --confusion-min-score 0.3]

--protocol adds metrics named after it next to the standard ones (longtail_seg/evaluation/protocols.py): AP_fixed,
APr_fixed, ... (AP-fixed: each category's --dets-per-category best detections over the split, no per-image cap),
AP_boundary, ... (boundary AP of masks) or, for challenge2021, all of them and AP_fixed_boundary. Per-category AP
and the error breakdown are of the standard evaluation.

The ground truth is checked first (structure, records, segmentations), unless --checked names a check_dataset report
of this very file (same SHA-256): the workflow passes the report of its gate, so a val file is checked once, not
once per evaluation. The predictions file is read by hotcoco, not parsed in Python, unless a check finds a bad
result to name (longtail_seg/evaluation/lvis_eval.py). The same evaluation also gives each category's AP
(--out-per-category) and the TIDE-style error breakdown with the most frequent mistakes on rare categories
(--out-errors), which rules/analysis.smk turns into figures.
"""

from __future__ import annotations

import argparse
import time

from longtail_seg.cli import script_parser
from longtail_seg.data.check import check_dataset
from longtail_seg.evaluation.lvis_eval import (
    IOU_TYPES,
    LVIS_MAX_DETS_PER_IMAGE,
    error_breakdown,
    format_metrics_table,
    load_ground_truth,
    per_category_ap,
    write_metrics,
)
from longtail_seg.evaluation.per_category import per_category_frame, write_csv
from longtail_seg.evaluation.protocols import evaluate_protocol
from longtail_seg.inference.config import AP_FIXED_DETS_PER_CATEGORY, PROTOCOLS
from longtail_seg.io_utils import atomic_write_json, file_sha256, load_json_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--annotations", required=True, help="LVIS-format ground-truth JSON")
    parser.add_argument("--predictions", required=True, help="LVIS results JSON (list of detection dicts)")
    parser.add_argument("--out", help="metrics.json to write (needed unless --out-per-category / --out-errors)")
    parser.add_argument("--iou-types", nargs="+", choices=IOU_TYPES, default=list(IOU_TYPES),
                        help="IoU types to evaluate (default: bbox segm)")
    parser.add_argument("--max-dets", type=int, default=LVIS_MAX_DETS_PER_IMAGE,
                        help="detections kept per image (LVIS: 300)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="standard",
                        help="evaluation protocol (default standard LVIS AP); others add metrics named after them")
    parser.add_argument("--dets-per-category", type=int, default=AP_FIXED_DETS_PER_CATEGORY,
                        help="AP-fixed: detections kept per category over the split (default 10000)")
    parser.add_argument("--checked", help="check_dataset report of --annotations (rule check_dataset): when it is "
                                          "about this very file, the ground truth is not checked again")
    parser.add_argument("--out-per-category", help="also write each category's AP per IoU type (CSV: category_id, "
                                                   "name, frequency, AP_bbox, AP_segm)")
    parser.add_argument("--out-errors", help="also write the TIDE-style error breakdown per IoU type and the most "
                                             "frequent mistakes on rare categories (JSON)")
    parser.add_argument("--confusion-min-score", type=float, default=0.3,
                        help="detections counted in the rare-category confusions have at least this score")
    args = parser.parse_args(argv)
    if not (args.out or args.out_per_category or args.out_errors):
        parser.error("nothing to write: give --out (metrics.json), --out-per-category or --out-errors")
    return args


def check_ground_truth(annotations: str, report: str | None, require_masks: bool) -> None:
    """Check the ground-truth file (no images: evaluation reads none), unless ``report`` is a check_dataset report of
    this file's current contents that covered masks too."""
    if report is not None:
        checked = load_json_file(report, "data check report", "delete it and rerun the `check_dataset` job")
        covers_masks = checked.get("require_masks", True) or not require_masks  # the script's reports always did
        if covers_masks and checked.get("annotation_sha256") == file_sha256(annotations):
            return
    check_dataset(annotations, role="eval", require_masks=require_masks, progress=False)


def main(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    try:
        check_ground_truth(args.annotations, args.checked, require_masks="segm" in args.iou_types)
        ground_truth = load_ground_truth(args.annotations)
        metrics: dict
        evaluators: dict = {}
        metrics, count = evaluate_protocol(ground_truth, args.predictions, args.protocol, args.iou_types,
                                           args.max_dets, args.dets_per_category, evaluators=evaluators)
    except (ValueError, FileNotFoundError) as error:  # each names the file, the record and the fix
        raise SystemExit(f"evaluate: {error}") from None
    metrics["protocol"] = args.protocol
    if args.out_per_category:
        categories = ground_truth.load_cats(ground_truth.get_cat_ids())
        ap = {iou_type: per_category_ap(evaluator) for iou_type, evaluator in evaluators.items()}
        write_csv(per_category_frame(categories, ap), args.out_per_category, decimals=4)
    if args.out_errors:
        categories = ground_truth.load_cats(ground_truth.get_cat_ids())
        atomic_write_json(args.out_errors, {iou_type: error_breakdown(evaluator, categories, args.confusion_min_score)
                                            for iou_type, evaluator in evaluators.items()}, indent=2)
    metrics["num_images"] = len(ground_truth.get_img_ids())
    metrics["num_detections"] = count
    if args.out:
        write_metrics(args.out, metrics)
    print(format_metrics_table(metrics))
    for iou_type in args.iou_types:
        extra = {key: value for key, value in metrics[iou_type].items() if "_" in key}
        if extra:
            print(iou_type, " ".join(f"{key}={'-' if v is None else f'{v:.2f}'}" for key, v in extra.items()))
    print(f"{metrics['num_detections']} detections on {metrics['num_images']} images, "
          f"evaluated in {time.perf_counter() - start:.1f}s -> "
          f"{', '.join(p for p in (args.out, args.out_per_category, args.out_errors) if p)}")
    return metrics


if __name__ == "__main__":
    main(parse_args())
