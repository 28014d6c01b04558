"""Single-scale inference of a trained model on an LVIS-format split -> LVIS results JSON (boxes + RLE masks).

    python workflow_scripts/infer.py --checkpoint results/demo/models/representation/model_final.pth \
        --annotations data/demo/annotations/val.json --image-root data/demo/images \
        --test-cfg '{"min_size": 128, "max_size": 213}' --out predictions.json

The checkpoint carries the model config and the dataset's category ids, so the model is rebuilt from it alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from longtail_seg.cli import parse_json_object  # noqa: E402

from longtail_seg.data.dataset import LVISDetectionDataset  # noqa: E402
from longtail_seg.data.transforms import build_test_transforms  # noqa: E402
from longtail_seg.engine.train import resolve_device  # noqa: E402
from longtail_seg.inference.predict import predict_dataset, write_results  # noqa: E402
from longtail_seg.models.detector import load_detector  # noqa: E402


@dataclass(frozen=True)
class TestConfig:
    """One `tests:` entry of config.yaml (single-scale test)."""

    min_size: int = 800
    max_size: int = 1333
    batch_size: int = 8
    num_workers: int = 0
    max_dets: int = 300  # detections per image (LVIS allows 300); also sets the model's own cap
    mask_threshold: float = 0.5

    @classmethod
    def from_dict(cls, cfg: dict) -> "TestConfig":
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise SystemExit(f"--test-cfg: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**cfg)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model_final.pth written by training")
    parser.add_argument("--annotations", required=True, help="LVIS-format JSON of the split to predict")
    parser.add_argument("--image-root", required=True, help="folder the images' file names are relative to")
    parser.add_argument("--test-cfg", default="{}", help="JSON object: one entry of the config's `tests:`")
    parser.add_argument("--out", required=True, help="LVIS results JSON to write")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TestConfig.from_dict(parse_json_object(args.test_cfg, "--test-cfg"))
    device = resolve_device(args.device)
    model, meta = load_detector(args.checkpoint, map_location=device)
    model.to(device)
    model.roi_heads.detections_per_img = cfg.max_dets  # a test-time choice: no retraining to change it
    dataset = LVISDetectionDataset(
        args.annotations, args.image_root, transforms=build_test_transforms(cfg.min_size, cfg.max_size),
        category_ids=meta["category_ids"], with_masks=False,
    )
    start = time.perf_counter()
    results = predict_dataset(model, dataset, device, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                              max_dets=cfg.max_dets, mask_threshold=cfg.mask_threshold)
    elapsed = time.perf_counter() - start
    write_results(args.out, results)
    print(f"{len(results)} detections on {len(dataset)} images in {elapsed:.1f}s "
          f"({1000 * elapsed / max(len(dataset), 1):.0f} ms/image) -> {args.out}")
    return results


if __name__ == "__main__":
    main(parse_args())
