"""Post-processing speed at LVIS shape: the straightforward path vs ours, and soft-NMS one box at a time vs all
classes in step, side by side in one run.

Box post-processing, per image (1000 RoIs x 1203 classes, score threshold 1e-4, NMS 0.5, 300 detections):

OLD = torchvision's ``postprocess_detections`` steps: clip every (RoI, class) box, threshold, drop small boxes,
      ``torchvision.ops.batched_nms`` over every candidate (a per-class loop above 4000 boxes on CPU, 20000 on GPU,
      else float32 coordinate offsets), the first 300;
NEW = ``StandardRoIHeads.postprocess_detections``: candidates clipped after selection, exact float64 class-aware
      NMS on the top-k candidates first (``longtail_seg/models/postprocess.py``).

Scores (made like the tests' ``_lvis_head_outputs``): RoIs cluster around 40 objects; ``trained-like`` is a softmax
over logits N(0, 1) with the background at +12 and 20 classes per RoI (the object's class among them) at 6..13,
so ~20k (RoI, class) pairs pass 1e-4; ``untrained`` is a softmax over logits N(0, 2.85^2), ~320k pairs pass.
Decoding all 1.2M boxes (unchanged, outside post-processing) is timed alongside for scale.

Soft-NMS (linear, IoU 0.5, 300 kept): 3,000 boxes from 10 jittered views of 300 objects, one class each (ids up to
1203, coordinates up to 2400 px), as multi-scale testing merges per image.

Rounds alternate OLD and NEW so background load hits both alike; the device is synchronised around each timing
and the median round is reported. Outputs are compared (NEW must equal the float64 per-class reference: it is
exact; OLD may differ where float32 offsets round or ties sort differently).

    python benchmarks/postprocess_speed.py [--device cuda] [--rounds 5] [--threads 1] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from bench_common import machine, markdown_table, write_results
from torchvision.ops import boxes as box_ops

from longtail_seg.inference.soft_nms import soft_nms, soft_nms_one_at_a_time
from longtail_seg.models.config import resolve_model_cfg
from longtail_seg.models.roi_heads import StandardRoIHeads, build_roi_heads

NUM_CLASSES, NUM_ROIS, IMAGE_SHAPE = 1203, 1000, (800, 1333)  # an LVIS test image: short side 800, long 1333
SCORE_THRESH, NMS_THRESH, DETECTIONS = 1e-4, 0.5, 300


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index] (default cpu)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per configuration (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default torch's; 1 gives steadier numbers on a busy machine, where a "
                             "parallel op waits for a descheduled thread)")
    parser.add_argument("--out-dir", default=None, help="where the JSON and Markdown go (default benchmarks/results)")
    return parser.parse_args(argv)


def head_outputs(distribution: str, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """Class probabilities [R, C+1], box deltas [R, 4(C+1)] and proposals [R, 4] of one image (see the module
    docstring for the two score distributions)."""
    g = torch.Generator().manual_seed(seed)
    height, width = IMAGE_SHAPE
    centres = torch.rand(40, 2, generator=g) * torch.tensor([width, height])
    sizes = torch.rand(40, 2, generator=g) * 300 + 10
    objects = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    owner = torch.randint(0, 40, (NUM_ROIS,), generator=g)
    proposals = objects[owner] + torch.randn(NUM_ROIS, 4, generator=g) * 8
    deltas = torch.randn(NUM_ROIS, 4 * (NUM_CLASSES + 1), generator=g) * 0.1
    if distribution == "untrained":
        logits = torch.randn(NUM_ROIS, NUM_CLASSES + 1, generator=g) * 2.85
    else:
        logits = torch.randn(NUM_ROIS, NUM_CLASSES + 1, generator=g)
        logits[:, 0] += 12
        classes = torch.randint(1, NUM_CLASSES + 1, (NUM_ROIS, 20), generator=g)
        classes[:, 0] = NUM_CLASSES - owner
        logits.scatter_(1, classes, 6 + 7 * torch.rand(NUM_ROIS, 20, generator=g))
    return logits.softmax(dim=-1).to(device), deltas.to(device), proposals.to(device)


def straightforward_postprocess(scores: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """OLD: torchvision's ``RoIHeads.postprocess_detections`` for one image."""
    boxes = box_ops.clip_boxes_to_image(boxes, IMAGE_SHAPE)
    labels = torch.arange(scores.shape[1], device=scores.device).view(1, -1).expand_as(scores)
    boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
    keep = torch.where(scores > SCORE_THRESH)[0]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = box_ops.batched_nms(boxes, scores, labels, NMS_THRESH)[:DETECTIONS]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def float64_reference(scores: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every candidate, one float64 ``nms`` per class, ties by candidate index: what NEW must equal exactly."""
    boxes = box_ops.clip_boxes_to_image(boxes, IMAGE_SHAPE)[:, 1:].reshape(-1, 4)
    labels = torch.arange(1, scores.shape[1], device=scores.device).repeat(scores.shape[0])
    scores = scores[:, 1:].reshape(-1)
    keep = torch.nonzero(scores > SCORE_THRESH).squeeze(1)
    keep = keep[box_ops.remove_small_boxes(boxes[keep], 1e-2)]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    by_class = torch.sort(labels, stable=True).indices
    kept = []
    for members in by_class.split(torch.unique_consecutive(labels[by_class], return_counts=True)[1].tolist()):
        members = members[torch.sort(scores[members], descending=True, stable=True).indices]
        visit_order = -torch.arange(len(members), dtype=torch.float64, device=scores.device)
        kept.append(members[box_ops.nms(boxes[members].double(), visit_order, NMS_THRESH)])
    kept = torch.cat(kept).sort().values
    kept = kept[torch.sort(scores[kept], descending=True, stable=True).indices][:DETECTIONS]
    return {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}


def merge_inputs(device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """3,000 boxes: 10 jittered views of 300 objects, one class per object (ids 904..1203), scores in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(300, 2, generator=g) * 2000
    objects = torch.cat([corners, corners + torch.rand(300, 2, generator=g) * 380 + 20], dim=1)
    owner = torch.arange(300).repeat(10)
    boxes = (objects[owner] + torch.randn(3000, 4, generator=g) * 10).clamp(0, 2400)
    return boxes.to(device), torch.rand(3000, generator=g).to(device), (NUM_CLASSES - owner).to(device)


def timed(run: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds one call takes, the device synchronised before and after, and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[key], b[key]) for key in ("boxes", "scores", "labels"))


def lvis_heads(device: torch.device) -> StandardRoIHeads:
    """Standard RoI heads at LVIS test settings (only their post-processing runs here)."""
    heads = build_roi_heads(resolve_model_cfg({"backbone": "tiny"}), 32, NUM_CLASSES).to(device).eval()
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = SCORE_THRESH, NMS_THRESH, DETECTIONS
    return heads


def main(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    heads = lvis_heads(device)
    rows: list[dict[str, Any]] = []
    for distribution in ("trained-like", "untrained"):
        scores, deltas, proposals = head_outputs(distribution, device, args.seed)
        decode_s, boxes = timed(lambda: heads.box_coder.decode(deltas, [proposals]), device)  # noqa: B023 (run here)
        candidates = int((scores[:, 1:] > SCORE_THRESH).sum())
        # the lambdas run within this iteration, on this iteration's tensors
        runs = {"old": lambda: straightforward_postprocess(scores, boxes),  # noqa: B023
                "new": lambda: heads.postprocess_detections(scores, boxes, [proposals], [IMAGE_SHAPE])[0]}  # noqa: B023
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        outputs: dict[str, Any] = {}
        for _ in range(args.rounds):
            for name, run in runs.items():
                elapsed, outputs[name] = timed(run, device)
                seconds[name].append(elapsed)
        reference = float64_reference(scores, boxes)
        old_s, new_s = (statistics.median(seconds[name]) for name in ("old", "new"))
        rows.append({"step": f"post-processing, {distribution}", "candidates": candidates, "old_s": old_s,
                     "new_s": new_s, "speedup": old_s / new_s, "new_equals_reference": same(outputs["new"], reference),
                     "rounds_s": {name: [round(t, 5) for t in times] for name, times in seconds.items()},
                     "old_equals_reference": same(outputs["old"], reference), "box_decode_s": decode_s})
        print(f"{distribution}: {candidates} candidates, old {old_s:.4f}s new {new_s:.4f}s "
              f"({old_s / new_s:.1f}x), new exact: {rows[-1]['new_equals_reference']}, "
              f"old equal: {rows[-1]['old_equals_reference']}", flush=True)
    boxes, scores, labels = merge_inputs(device, args.seed)
    runs = {"old": lambda: soft_nms_one_at_a_time(boxes, scores, labels, 0.5, "linear", max_dets=DETECTIONS),
            "new": lambda: soft_nms(boxes, scores, labels, 0.5, "linear", max_dets=DETECTIONS)}
    seconds = {name: [] for name in runs}
    outputs = {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            elapsed, outputs[name] = timed(run, device)
            seconds[name].append(elapsed)
    old_s, new_s = (statistics.median(seconds[name]) for name in ("old", "new"))
    equal = all(torch.equal(a, b) for a, b in zip(outputs["old"], outputs["new"]))
    rows.append({"step": "soft-NMS merge, 3000 boxes / 300 classes", "candidates": len(boxes), "old_s": old_s,
                 "new_s": new_s, "speedup": old_s / new_s, "new_equals_reference": equal,
                 "rounds_s": {name: [round(t, 5) for t in times] for name, times in seconds.items()}})
    print(f"soft-NMS: old {old_s:.4f}s new {new_s:.4f}s ({old_s / new_s:.1f}x), identical: {equal}", flush=True)
    result = {"benchmark": "postprocess_speed", "device": str(device), "rounds": args.rounds,
              "settings": {"classes": NUM_CLASSES, "rois": NUM_ROIS, "image": list(IMAGE_SHAPE),
                           "score_thresh": SCORE_THRESH, "nms_thresh": NMS_THRESH, "detections": DETECTIONS},
              "machine": machine(device), "rows": rows}
    name = "postprocess_speed" if device.type == "cpu" else f"postprocess_speed_{device.type}"
    markdown = (f"Per image, median of {args.rounds} alternating rounds on {device}; seconds. "
                "`new_equals_reference`: identical to float64 per-class NMS over every candidate (post-processing) "
                "or to the one-box-at-a-time loop (soft-NMS).\n\n"
                + markdown_table(rows, ["step", "candidates", "old_s", "new_s", "speedup", "new_equals_reference",
                                        "old_equals_reference", "box_decode_s"]))
    path = write_results(name, result, markdown, args.out_dir)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main(parse_args())
