"""Training throughput: our loop with real data loading vs the stock torchvision Mask R-CNN step.

OURS  = ``longtail_seg.engine.train.train`` on our model (replaceable classifier RoI heads, no internal
        resize), fed by LVISDetectionDataset + train transforms + sampler + DataLoader: decoding PNGs and
        masks, resizing and flipping happen inside the timed loop. Throughput is read from the
        images_per_s of metrics.csv (first log window dropped as warmup).
STOCK = the same architecture with torchvision's own RoIHeads, FastRCNNPredictor and
        GeneralizedRCNNTransform (resize skipped in training), stepped like torchvision's
        references/detection ``train_one_epoch`` on batches pre-loaded in memory (no data loading).

Rounds alternate STOCK, OURS, STOCK, OURS, ... so background load hits both alike. Target: ours >= 95% of
stock. Without --annotations a small synthetic demo set (128x128 images, ~4 objects, 192 classes) is generated.

    python benchmarks/train_throughput.py [--annotations train.json --image-root images/] [--iterations 40]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from longtail_seg.data.dataset import LVISDetectionDataset, collate_detection
from longtail_seg.data.transforms import build_train_transforms
from longtail_seg.engine.schedule import build_optimizer
from longtail_seg.engine.train import train
from longtail_seg.models.config import resolve_model_cfg
from longtail_seg.models.detector import build_detector
from longtail_seg.sampling import build_sampler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", help="LVIS-format training JSON (default: generate a synthetic set)")
    parser.add_argument("--image-root", help="image folder for --annotations")
    parser.add_argument("--num-images", type=int, default=240, help="synthetic training images (default 240)")
    parser.add_argument("--model-cfg", default="{}", help="JSON model config (default: the demo model)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=40, help="timed iterations per round (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations per round (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each (default 2)")
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers for ours (default 1)")
    parser.add_argument("--min-size", type=int, default=128, help="training short side (default 128)")
    parser.add_argument("--max-size", type=int, default=213, help="training long-side cap (default 213)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json-out", help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def synthetic_dataset(folder: Path, num_images: int) -> tuple[Path, Path]:
    """Generate the demo's synthetic long-tail data (train split only) into ``folder``."""
    from longtail_seg.data.synthetic import generate_dataset

    paths = generate_dataset(folder, seed=0, num_train=num_images, num_val=1, num_unlabeled=0)
    return paths["train"], paths["image_root"]


def stock_equivalent(model_cfg: dict, num_classes: int) -> torch.nn.Module:
    """Our architecture with torchvision's stock RoIHeads, FastRCNNPredictor and transform."""
    model = build_detector(model_cfg, num_classes)
    cfg = resolve_model_cfg(model_cfg)
    ours = model.roi_heads
    model.roi_heads = RoIHeads(
        ours.box_roi_pool, ours.box_head, FastRCNNPredictor(cfg["box_head_dim"], num_classes + 1),
        0.5, 0.5, cfg["box_batch_size_per_image"], cfg["box_positive_fraction"], None,
        cfg["box_score_thresh"], cfg["box_nms_thresh"], cfg["box_detections_per_img"],
        ours.mask_roi_pool, ours.mask_head, ours.mask_predictor,
    )
    model.transform = GeneralizedRCNNTransform(
        cfg["min_size"], cfg["max_size"], cfg["image_mean"], cfg["image_std"], _skip_resize=True
    )
    return model


def time_stock(model_cfg: dict, num_classes: int, batches: list, warmup: int, iterations: int) -> float:
    """Images/s of torchvision's reference training step on pre-loaded batches."""
    torch.manual_seed(0)
    model = stock_equivalent(model_cfg, num_classes).train()
    optimizer = build_optimizer(model, "adamw", 2e-3, 1e-4)
    cycle = itertools.cycle(batches)
    images_done, start = 0, 0.0
    for step in range(warmup + iterations):
        if step == warmup:
            start, images_done = time.perf_counter(), 0
        images, targets = next(cycle)
        loss_dict = model(images, targets)
        losses = sum(loss_dict.values())
        loss_value = losses.item()
        if not torch.isfinite(torch.tensor(loss_value)):
            raise FloatingPointError(f"stock step: loss is {loss_value}")
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        images_done += len(images)
    return images_done / (time.perf_counter() - start)


def time_ours(model_cfg: dict, dataset, batch_size: int, warmup: int, iterations: int, num_workers: int) -> float:
    """Images/s of our train() with real loading, from metrics.csv (warmup window dropped)."""
    torch.manual_seed(0)
    model = build_detector(model_cfg, dataset.num_classes)
    sampler = build_sampler("uniform", len(dataset), seed=0)
    cfg = {"batch_size": batch_size, "epochs": 1000, "max_iterations": warmup + iterations, "log_period": warmup,
           "checkpoint_period": 10**9, "num_workers": num_workers, "progress_bar": False, "lr": 2e-3,
           "warmup_iters": 0, "lr_schedule": "constant"}
    with tempfile.TemporaryDirectory() as out_dir:
        train(model, dataset, sampler, cfg, out_dir, "cpu", collate_fn=collate_detection)
        metrics = pd.read_csv(Path(out_dir) / "metrics.csv")
    timed = metrics.iloc[1:]  # windows after the first (warmup) one
    # images / time over the timed windows (each row: log_period iterations at images_per_s)
    seconds = (warmup * batch_size / timed["images_per_s"]).sum()
    return len(timed) * warmup * batch_size / seconds


def preload_batches(dataset, batch_size: int, count: int) -> list:
    """``count`` batches of the dataset (with its transforms) held in memory."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_detection,
                                         generator=torch.Generator().manual_seed(0))
    return list(itertools.islice(iter(loader), count))


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    model_cfg = json.loads(args.model_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        if args.annotations:
            annotations, image_root = args.annotations, args.image_root
        else:
            annotations, image_root = synthetic_dataset(Path(tmp) / "data", args.num_images)
        transforms = build_train_transforms([args.min_size, args.min_size], args.max_size, 0.5)
        dataset = LVISDetectionDataset(annotations, image_root, transforms=transforms)
        batches = preload_batches(dataset, args.batch_size, count=min(16, len(dataset) // args.batch_size))
        # iterations must be a multiple of the log window (= warmup) for the metrics-based timing
        iterations = max(args.warmup, args.iterations // args.warmup * args.warmup)
        stock, ours = [], []
        for round_index in range(args.rounds):
            stock.append(time_stock(model_cfg, dataset.num_classes, batches, args.warmup, iterations))
            ours.append(time_ours(model_cfg, dataset, args.batch_size, args.warmup, iterations, args.num_workers))
            print(f"round {round_index + 1}: stock {stock[-1]:.1f} img/s, ours {ours[-1]:.1f} img/s", flush=True)
    result = {
        "images": len(dataset), "classes": dataset.num_classes, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "num_workers": args.num_workers,
        "stock_images_per_s": statistics.median(stock), "ours_images_per_s": statistics.median(ours),
    }
    result["ratio"] = result["ours_images_per_s"] / result["stock_images_per_s"]
    print(f"stock torchvision step (pre-loaded batches): {result['stock_images_per_s']:.1f} img/s")
    print(f"ours (train() + dataset + transforms + sampler + DataLoader): {result['ours_images_per_s']:.1f} img/s")
    print(f"ratio ours/stock: {result['ratio']:.3f} (target >= 0.95)")
    if args.json_out:
        from longtail_seg.io_utils import atomic_write_json

        atomic_write_json(args.json_out, result, indent=2)


if __name__ == "__main__":
    main(parse_args())
