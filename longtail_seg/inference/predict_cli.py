"""Command line of predict on new images (``workflow_scripts/predict.py`` and the ``longtail-predict`` console
script): a trained model_final.pth over image files or folders -> LVIS results JSON and drawn images.

    longtail-predict --model results/demo/models/bgs/model_final.pth --images photos/ extra.jpg --out predictions/ \
        [--test single_scale] [--config config.yaml] [--min-size 128 --max-size 240] [--device auto] \
        [--score-threshold 0.5] [--categories data/demo/annotations/train.json]

Writes OUT/results.json (LVIS results: image_id, category_id, bbox xywh, score, RLE segmentation), OUT/images.json
(image id -> file_name, height, width; the skipped files and why; category ids and names) and OUT/drawn/*.png.
Test sizes: a `tests:` entry of --config (--test), then --min-size / --max-size / --max-dets on top; without
--test the TestConfig defaults (LVIS: short side 800, long side <= 1333).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from longtail_seg.inference.config import TestConfig


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The predict command line."""
    parser = argparse.ArgumentParser(prog="longtail-predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model_final.pth written by training")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", required=True, help="output folder (results.json, images.json, drawn/)")
    parser.add_argument("--test", help="a `tests:` entry of --config for the test sizes (e.g. single_scale)")
    parser.add_argument("--config", default="config.yaml", help="workflow config holding --test (default config.yaml)")
    parser.add_argument("--min-size", type=int, help="short side of the test image (overrides --test)")
    parser.add_argument("--max-size", type=int, help="cap on the long side (overrides --test)")
    parser.add_argument("--max-dets", type=int, help="detections kept per image (overrides --test)")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="draw detections with at least this score (results.json keeps all; default 0.5)")
    parser.add_argument("--no-draw", action="store_true", help="write no drawn images")
    parser.add_argument("--categories", help="LVIS-format JSON whose categories name the classes (default: the "
                                             "names stored in the checkpoint, else the ids)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    return parser.parse_args(argv)


def test_config_from_args(args: argparse.Namespace) -> TestConfig:
    """The TestConfig of --test in --config (or the defaults), with the size flags on top."""
    settings: dict[str, Any] = {}
    if args.test:
        from longtail_seg.workflow_config import test_settings

        try:
            with open(args.config) as f:
                config = yaml.safe_load(f) or {}
        except OSError as error:
            raise ValueError(f"--config {args.config}: cannot read it ({error.strerror}); pass the workflow config "
                             "holding --test") from None
        if not isinstance(config, dict) or not isinstance(config.get("tests"), dict):
            raise ValueError(f"--config {args.config} has no `tests:` section; pass the workflow config.yaml")
        settings = test_settings(config, args.test)
    for key in ("min_size", "max_size", "max_dets"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    return TestConfig.from_dict(settings, section=f"tests.{args.test}" if args.test else "test settings")


test_config_from_args.__test__ = False  # not a pytest test


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run predict; a refused input exits with its message (exit status 2 for bad arguments, 1 otherwise)."""
    args = parse_args(argv)

    from longtail_seg.inference.new_images import PredictInputError, predict_new_images
    from longtail_seg.runtime import resolve_device, set_torch_threads

    set_torch_threads(args.threads)
    try:
        cfg = test_config_from_args(args)
        summary = predict_new_images(args.model, args.images, args.out, cfg, resolve_device(args.device),
                                     draw_threshold=args.score_threshold, draw=not args.no_draw,
                                     categories_file=args.categories)
    except (PredictInputError, ValueError, RuntimeError) as error:
        raise SystemExit(f"predict: {error}") from None
    print(f"{summary['detections']} detections on {summary['images']} images ({summary['skipped']} skipped) in "
          f"{summary['seconds']:.1f}s -> {summary['results']}", file=sys.stderr)
    return summary
