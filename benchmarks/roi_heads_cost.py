"""Cost of a model option side by side with the plain model: parameters, CPU training step and inference time.

Each variant is the demo model (``config.yaml`` ``model:`` defaults, 192 classes) with some keys changed, by
default ``standard`` (Mask R-CNN's RoI heads), ``cascade`` (``roi_heads: cascade``), ``htc``, ``double_head``
(``box_head: double``, the demo's 256-wide conv head) and ``mask_iou`` (``mask_iou_head: true``), the last two on the
standard heads. On the same in-memory
batch (``--batch-size`` synthetic 128 x 128 images with 3 objects each, as the demo's), every variant does untimed
warm-up steps and then timed ones: a training step (forward, backward, AdamW step) and an inference pass
(``Detector.detect``, no pasting). Rounds alternate the variants so background load hits all alike; the result
is the median time per step over all timed steps.

    python benchmarks/roi_heads_cost.py [--variant NAME='{"roi_heads": "cascade"}' ...] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from bench_common import machine, markdown_table, write_results

from longtail_seg.models.detector import build_detector

DEFAULT_VARIANTS = {"standard": {}, "cascade": {"roi_heads": "cascade"}, "htc": {"roi_heads": "htc"},
                    "double_head": {"box_head": "double"}, "mask_iou": {"mask_iou_head": True}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="a model variant: its name and model keys as JSON (default: standard, cascade, htc, "
                             "double_head, mask_iou)")
    parser.add_argument("--num-classes", type=int, default=192, help="foreground classes (default 192, the demo)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default 8, the demo's)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and variant (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per round and variant (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--name", default="roi_heads_cost", help="results file name (default roi_heads_cost)")
    return parser.parse_args(argv)


def variants(specs: list[str]) -> dict[str, dict[str, Any]]:
    """``NAME=JSON`` specs as {name: model keys}; the default pair without any."""
    if not specs:
        return dict(DEFAULT_VARIANTS)
    parsed = {}
    for spec in specs:
        name, _, keys = spec.partition("=")
        parsed[name] = json.loads(keys or "{}")
    return parsed


def synthetic_batch(batch_size: int, size: int, num_classes: int) -> tuple[list[torch.Tensor], list[dict]]:
    """``batch_size`` noisy images with 3 filled rectangles each, their boxes, labels and masks (seeded)."""
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(batch_size):
        image = torch.rand(3, size, size, generator=generator) * 0.3
        boxes, masks = [], torch.zeros(3, size, size, dtype=torch.uint8)
        for index in range(3):
            w, h = (int(v) for v in torch.randint(size // 8, size // 3, (2,), generator=generator))
            x0, y0 = (int(v) for v in torch.randint(0, size - max(w, h), (2,), generator=generator))
            image[:, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=generator)
            masks[index, y0:y0 + h, x0:x0 + w] = 1
            boxes.append([x0, y0, x0 + w, y0 + h])
        labels = torch.randint(1, num_classes + 1, (3,), generator=generator)
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": labels, "masks": masks})
    return images, targets


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """All parameters and those of the RoI heads."""
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "roi_heads_parameters": sum(p.numel() for p in model.roi_heads.parameters())}


def timed_steps(model, optimizer, images, targets, steps: int) -> tuple[list[float], list[float]]:
    """``steps`` training steps and ``steps`` inference passes: their wall times in seconds."""
    train_times, infer_times = [], []
    for _ in range(steps):
        model.train()
        start = time.perf_counter()
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        train_times.append(time.perf_counter() - start)
        model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            model.detect(images)
        infer_times.append(time.perf_counter() - start)
    return train_times, infer_times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images, targets = synthetic_batch(args.batch_size, args.size, args.num_classes)
    models = {}
    for name, keys in variants(args.variant).items():
        torch.manual_seed(0)
        model = build_detector(keys, args.num_classes)
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    times = {name: ([], []) for name in models}
    for _ in range(args.rounds):
        for name, (model, optimizer) in models.items():
            timed_steps(model, optimizer, images, targets, args.warmup)
            train_times, infer_times = timed_steps(model, optimizer, images, targets, args.steps)
            times[name][0].extend(train_times)
            times[name][1].extend(infer_times)
    rows = []
    for name, (model, _) in models.items():
        train_s, infer_s = (statistics.median(t) for t in times[name])
        rows.append({"variant": name, **parameter_counts(model), "train_step_s": train_s, "inference_s": infer_s,
                     "train_images_per_s": args.batch_size / train_s,
                     "inference_images_per_s": args.batch_size / infer_s})
    for row in rows:  # measured side by side in one run: the ratios hold better than the seconds on a loaded machine
        row["train_vs_first"] = row["train_step_s"] / rows[0]["train_step_s"]
        row["inference_vs_first"] = row["inference_s"] / rows[0]["inference_s"]
    settings = {key: getattr(args, key) for key in ("num_classes", "batch_size", "size", "steps", "warmup", "rounds")}
    result = {"variants": variants(args.variant), "settings": settings, "rows": rows, "machine": machine()}
    markdown = (f"Median over {args.rounds * args.steps} steps per variant; batch of {args.batch_size} images of "
                f"{args.size} x {args.size}, {args.num_classes} classes.\n\n" + markdown_table(rows))
    write_results(args.name, result, markdown)
    print(markdown)
    return result


if __name__ == "__main__":
    main()
