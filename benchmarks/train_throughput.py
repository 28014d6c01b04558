"""Training throughput: our loop with real data loading vs the stock torchvision Mask R-CNN step, and the double
classifier's cost, at the demo's shape or at LVIS's (1203 classes, COCO-sized images).

Measured side by side in alternating rounds (so background load hits all alike), images/s after warmup:

STOCK_PRELOADED = torchvision's own RoIHeads, FastRCNNPredictor and GeneralizedRCNNTransform (resize skipped)
                  on our backbone + RPN, stepped like references/detection ``train_one_epoch`` on batches held in
                  memory: the step alone, no data loading (an upper bound).
STOCK_LOADER    = the same step fed by a DataLoader over the same dataset, transforms and workers, as
                  references/detection trains: the fair reference for ours.
OURS_PRELOADED  = our detector (replaceable classifier RoI heads, no internal resize) stepped by the same reference
                  loop on the same pre-loaded batches: the model's share of a difference.
OURS            = ``longtail_seg.engine.train.train`` (replaceable classifier RoI heads, sampler, seeded samples,
                  metrics, NaN checks) with real loading; images/s from its metrics.csv, first window dropped.
OURS_DOUBLE     = OURS with the double classifier (softmax + balanced group softmax branches trained in one
                  step): its overhead over OURS is the double classifier's share of the step (target <= 5%).

Targets: ours >= 95% of stock with loading. ``--data demo`` generates the demo's synthetic set (128 px, 192
classes); ``--data lvis`` the LVIS rehearsal's (1203 classes, COCO image sizes; ResNet-50 FPN by default).

    python benchmarks/train_throughput.py                       # demo data, demo model, CPU
    python benchmarks/train_throughput.py --data lvis --quick   # 1203 classes, ResNet-50 FPN, short side 320
    python benchmarks/train_throughput.py --data lvis --device cuda --dtype bf16 --batch-size 8
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, markdown_table, write_results  # noqa: E402

from longtail_seg.data.dataset import LVISDetectionDataset, collate_detection  # noqa: E402
from longtail_seg.data.synthetic_lvis import LVIS_MIN_NUM_TRAIN  # noqa: E402
from longtail_seg.data.transforms import build_train_transforms  # noqa: E402
from longtail_seg.engine.schedule import build_optimizer  # noqa: E402
from longtail_seg.engine.train import train  # noqa: E402
from longtail_seg.models.config import resolve_model_cfg  # noqa: E402
from longtail_seg.models.detector import build_detector  # noqa: E402
from longtail_seg.runtime import resolve_device  # noqa: E402
from longtail_seg.sampling import build_sampler  # noqa: E402
from longtail_seg.stats import bgs_groups  # noqa: E402

LVIS_MODEL = {"backbone": "resnet50", "pretrained_backbone": False, "trainable_backbone_layers": 3, "norm": "bn",
              "fpn_channels": 256, "anchor_sizes": None, "roi_feature_levels": ["0", "1", "2", "3"],
              "box_batch_size_per_image": 512, "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 1000}
CONFIGURATIONS = ("stock_preloaded", "stock_loader", "ours_preloaded", "ours", "ours_double")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("demo", "lvis"), default="demo", help="synthetic set to generate")
    parser.add_argument("--annotations", help="LVIS-format training JSON instead of a generated set")
    parser.add_argument("--image-root", help="image folder for --annotations")
    parser.add_argument("--num-images", type=int, default=None, help="generated training images (240 / 120)")
    parser.add_argument("--model-cfg", default=None, help="JSON model config (default: demo model / R50-FPN)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast (CUDA only)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 (demo) / 2 (lvis)")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations per round")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations per round (= log window)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each configuration")
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers for the loader paths")
    parser.add_argument("--min-size", type=int, default=None, help="training short side (128 / 800)")
    parser.add_argument("--max-size", type=int, default=None, help="training long-side cap (213 / 1333)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="small counts (lvis: batch 1, short side 320)")
    parser.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    return parser.parse_args(argv)


def fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The data mode's defaults for every size and count not given."""
    lvis = args.data == "lvis"
    defaults = {"num_images": LVIS_MIN_NUM_TRAIN if lvis else 240, "batch_size": 2 if lvis else 8,
                "min_size": 800 if lvis else 128, "max_size": 1333 if lvis else 213,
                "iterations": 8 if lvis else 40, "warmup": 2 if lvis else 5}
    if args.quick:
        defaults.update({"num_images": LVIS_MIN_NUM_TRAIN, "batch_size": 1, "iterations": 2, "warmup": 1,
                         "min_size": 320, "max_size": 533} if lvis else {"num_images": 48, "iterations": 10})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def generated_dataset(folder: Path, data: str, num_images: int) -> tuple[Path, Path]:
    """Generate the demo's or the LVIS rehearsal's synthetic training split into ``folder``."""
    if data == "lvis":
        from longtail_seg.data.synthetic_lvis import generate_lvis_dataset

        paths = generate_lvis_dataset(folder, seed=0, num_train=num_images, num_val=1, num_unlabeled=1)
    else:
        from longtail_seg.data.synthetic import generate_dataset

        paths = generate_dataset(folder, seed=0, num_train=num_images, num_val=1, num_unlabeled=0)
    return paths["train"], paths["image_root"]


def double_classifier_cfg(dataset: LVISDetectionDataset, annotations: str | Path) -> dict:
    """The double classifier at the dataset's classes: a softmax and a balanced-group-softmax branch, the groups
    from the training instance counts with edges at their quartiles (four groups, as LVIS's bins give on LVIS)."""
    counts_by_id = Counter(int(a["category_id"]) for a in json.loads(Path(annotations).read_text())["annotations"])
    counts = np.array([counts_by_id.get(int(cid), 0) for cid in dataset.category_ids])
    edges = np.unique(np.quantile(counts, [0.25, 0.5, 0.75]).astype(int) + 1)
    groups = [int(g) for g in bgs_groups(counts, edges.tolist())]
    return {"type": "double", "branches": [{"type": "softmax"}, {"type": "bgs", "class_groups": groups}]}


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


def time_reference_loop(model: torch.nn.Module, batches, warmup: int, iterations: int, device: torch.device,
                        bf16: bool) -> float:
    """Images/s of references/detection's training step for ``model`` on ``batches`` (a list in memory, or a
    loader)."""
    model = model.to(device).train()
    optimizer = build_optimizer(model, "adamw", 2e-3, 1e-4)
    batch_iter = itertools.cycle(batches)
    images_done, start = 0, 0.0
    for step in range(warmup + iterations):
        if step == warmup:
            _synchronize(device)
            start, images_done = time.perf_counter(), 0
        images, targets = next(batch_iter)
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss_dict = model(images, targets)
        losses = sum(loss_dict.values())
        loss_value = losses.item()
        if not np.isfinite(loss_value):
            raise FloatingPointError(f"stock step: loss is {loss_value}")
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        images_done += len(images)
    _synchronize(device)
    return images_done / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(model_cfg: dict, dataset, args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of our train() with real loading, from metrics.csv (the first, warmup, window dropped)."""
    torch.manual_seed(0)
    model = build_detector(model_cfg, dataset.num_classes)
    sampler = build_sampler("uniform", len(dataset), seed=0)
    cfg = {"batch_size": args.batch_size, "epochs": 1000, "max_iterations": args.warmup + args.iterations,
           "log_period": args.warmup, "checkpoint_period": 10**9, "num_workers": args.num_workers,
           "progress_bar": False, "lr": 2e-3, "warmup_iters": 0, "lr_schedule": "constant",
           "amp": args.dtype == "bf16"}
    with tempfile.TemporaryDirectory() as out_dir:
        train(model, dataset, sampler, cfg, out_dir, str(device), collate_fn=collate_detection)
        metrics = pd.read_csv(Path(out_dir) / "metrics.csv")
    timed = metrics.iloc[1:]  # windows after the first (warmup) one, each log_period iterations
    seconds = (args.warmup * args.batch_size / timed["images_per_s"]).sum()
    return len(timed) * args.warmup * args.batch_size / seconds


def loader(dataset, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    """A shuffling DataLoader as references/detection builds one."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                       collate_fn=collate_detection, drop_last=True,
                                       generator=torch.Generator().manual_seed(0))


def measure_round(name: str, model_cfgs: dict, dataset, preloaded: list, args, device: torch.device) -> float:
    """One timing of configuration ``name``."""
    bf16 = args.dtype == "bf16" and device.type == "cuda"
    if name == "stock_preloaded":
        batches = preloaded
    elif name == "stock_loader":
        batches = _endless(dataset, args)
    elif name == "ours_preloaded":
        torch.manual_seed(0)
        model = build_detector(model_cfgs["ours"], dataset.num_classes)
        return time_reference_loop(model, preloaded, args.warmup, args.iterations, device, bf16)
    else:
        return time_ours(model_cfgs[name], dataset, args, device)
    torch.manual_seed(0)
    model = stock_equivalent(model_cfgs["ours"], dataset.num_classes)
    return time_reference_loop(model, batches, args.warmup, args.iterations, device, bf16)


def _endless(dataset, args):
    """Batches from fresh loaders (new epochs) for as long as they are asked for."""
    while True:
        yield from loader(dataset, args.batch_size, args.num_workers)


def summarise(times: dict[str, list[float]], args, dataset, device) -> dict:
    """Medians, ratios and the run's settings."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "data": args.data, "images": len(dataset), "classes": dataset.num_classes, "batch_size": args.batch_size,
        "min_size": args.min_size, "max_size": args.max_size, "dtype": args.dtype, "device": str(device),
        "num_workers": args.num_workers, "iterations": args.iterations, "warmup": args.warmup, "rounds": args.rounds,
        "images_per_s": medians, "all_rounds": times,
        "ratio_ours_vs_stock_loader": medians["ours"] / medians["stock_loader"],
        "ratio_ours_vs_stock_preloaded": medians["ours"] / medians["stock_preloaded"],
        "ratio_our_model_vs_stock_model": medians["ours_preloaded"] / medians["stock_preloaded"],
        "ratio_our_loop_vs_reference_loop": medians["ours"] / medians["ours_preloaded"],
        "loading_cost_stock": 1 - medians["stock_loader"] / medians["stock_preloaded"],
        "double_classifier_overhead": 1 - medians["ours_double"] / medians["ours"],
        "machine": machine(device),
    }


def report(result: dict) -> str:
    """The Markdown table and the ratios against their targets."""
    rows = [{"configuration": name, "images/s": value} for name, value in result["images_per_s"].items()]
    return (
        f"{result['data']} data: {result['classes']} classes, batch {result['batch_size']}, short side "
        f"{result['min_size']}, {result['dtype']} on {result['device']}, {result['num_workers']} loader worker(s), "
        f"medians of {result['rounds']} alternating rounds\n\n" + markdown_table(rows)
        + f"\n- ours / stock with loading: {result['ratio_ours_vs_stock_loader']:.3f} (target >= 0.95)\n"
        f"- ours / stock on pre-loaded batches: {result['ratio_ours_vs_stock_preloaded']:.3f}\n"
        f"- our model / stock model, same loop and batches: {result['ratio_our_model_vs_stock_model']:.3f}\n"
        f"- our train() with loading / the reference loop on pre-loaded batches, our model: "
        f"{result['ratio_our_loop_vs_reference_loop']:.3f}\n"
        f"- data loading's share of the stock step: {result['loading_cost_stock']:.1%}\n"
        f"- double classifier overhead: {result['double_classifier_overhead']:.1%} of the step (target <= 5%)\n"
    )


def main(args: argparse.Namespace) -> dict:
    args = fill_defaults(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    base_cfg = json.loads(args.model_cfg) if args.model_cfg else (dict(LVIS_MODEL) if args.data == "lvis" else {})
    times: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    with tempfile.TemporaryDirectory() as tmp:
        if args.annotations:
            annotations, image_root = args.annotations, args.image_root
        else:
            annotations, image_root = generated_dataset(Path(tmp) / "data", args.data, args.num_images)
        transforms = build_train_transforms([args.min_size, args.min_size], args.max_size, 0.5)
        dataset = LVISDetectionDataset(annotations, image_root, transforms=transforms)
        double = double_classifier_cfg(dataset, annotations)
        model_cfgs = {"ours": base_cfg, "ours_double": {**base_cfg, "classifier": double}}
        preloaded = list(itertools.islice(iter(loader(dataset, args.batch_size, 0)),
                                          max(1, min(16, len(dataset) // args.batch_size))))
        for round_index in range(args.rounds):
            for name in CONFIGURATIONS:
                times[name].append(measure_round(name, model_cfgs, dataset, preloaded, args, device))
            print(f"round {round_index + 1}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in times.items()) + " img/s",
                  flush=True)
        result = summarise(times, args, dataset, device)
    markdown = report(result)
    print(markdown)
    threads = f"_{args.threads}thread" if args.threads else ""
    name = f"train_throughput_{args.data}_{device.type}_{args.dtype}{threads}"
    write_results(name, result, markdown, args.out_dir)
    return result


if __name__ == "__main__":
    main(parse_args())
