"""Single-scale inference of a trained model on an LVIS-format split -> LVIS results JSON (boxes + RLE masks).

    python workflow_scripts/infer.py --checkpoint results/demo/models/representation/model_final.pth \
        --annotations data/demo/annotations/val.json --image-root data/demo/images \
        --test-cfg '{"min_size": 128, "max_size": 213}' --out predictions.json

The checkpoint carries the model config and the dataset's category ids, so the model is rebuilt from it alone.
"""

from __future__ import annotations

import argparse

from longtail_seg.cli import parse_json_object, script_parser
from longtail_seg.inference.config import TestConfig
from longtail_seg.inference.results import write_results
from longtail_seg.inference.run import predict_annotation_file
from longtail_seg.runtime import resolve_device, set_torch_threads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="model_final.pth written by training")
    parser.add_argument("--annotations", required=True, help="LVIS-format JSON of the split to predict")
    parser.add_argument("--image-root", required=True, help="folder the images' file names are relative to")
    parser.add_argument("--test-cfg", default="{}", help="JSON object: one entry of the config's `tests:`")
    parser.add_argument("--category-stats", nargs="?", const=None, default=None,
                        help="category_stats.csv of the training split (dataset statistics step): the instance "
                             "counts a test with norcal_gamma needs (the option without a file: none)")
    parser.add_argument("--out", required=True, help="LVIS results JSON to write")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> list[dict]:
    set_torch_threads(args.threads)
    try:
        cfg = TestConfig.from_dict(parse_json_object(args.test_cfg, "--test-cfg"))
    except ValueError as error:
        raise SystemExit(f"--test-cfg: {error}") from None
    if cfg.norcal_gamma is not None and args.category_stats is None:
        raise SystemExit("--test-cfg: norcal_gamma needs --category-stats (the dataset statistics' category_stats.csv)")
    results, num_images, elapsed = predict_annotation_file(
        args.checkpoint, args.annotations, args.image_root, cfg, resolve_device(args.device),
        category_stats=args.category_stats)
    write_results(args.out, results)
    print(f"{len(results)} detections on {num_images} images in {elapsed:.1f}s "
          f"({1000 * elapsed / max(num_images, 1):.0f} ms/image) -> {args.out}")
    return results


if __name__ == "__main__":
    main(parse_args())
