"""Inference throughput at LVIS shape: our detector + LVIS results vs stock torchvision, per stage, in one run.

Both sides get the same weights (ResNet-50 FPN, LVIS settings: 1000 test proposals, RoIAlign on 4 FPN levels,
score threshold 1e-4, 300 detections, 1203 classes by default) and the same COCO-sized images (640 x 480 originals,
short side 800 at test). Each image ends as LVIS result dicts with RLE masks at the original size.

OURS  = our test resize, ``Detector`` (own-class mask head, exact pre-selected post-processing) and the
        box-crop RLE encoder of ``inference/results.py``;
STOCK = torchvision's ``GeneralizedRCNN`` with its own ``RoIHeads`` (``FastRCNNPredictor`` holding our weights) and
        ``GeneralizedRCNNTransform`` (given the same resized pixels; it pastes every mask into the original image),
        threshold and ``pycocotools.mask.encode`` of the full-image masks.

A trained-like score distribution: an untrained classifier's softmax over 1204 classes is flat, so every
(RoI, class) pair passes 1e-4; a trained one is peaked. The classifier's logits are scaled (weights and bias
multiplied by one factor, found by bisection on the first batch) until on average ``--candidates-per-roi`` pairs
per RoI pass the threshold (20 by default: ~20k candidates per image at 1000 proposals, what a trained LVIS model
gives). ``--candidates-per-roi 0`` keeps the flat (untrained) distribution.

Stages are timed with the device synchronised; rounds alternate STOCK, OURS so background load hits both alike, and
the median round is reported. Detections of the two are compared (top-300 labels and boxes).

    python benchmarks/inference_throughput.py [--device cuda] [--dtype bf16] [--batch-size 8] [--rounds 3]
    python benchmarks/inference_throughput.py --quick     # tiny backbone, small images: a smoke test in seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import machine, markdown_table, write_results
from pycocotools import mask as mask_utils
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from longtail_seg.data.transforms import resize, resized_size
from longtail_seg.inference.results import detections_to_lvis_results
from longtail_seg.models.detector import build_detector

LVIS_MODEL_CFG = {
    "backbone": "resnet50", "fpn_channels": 256, "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
    "box_head_dim": 1024, "roi_feature_levels": ["0", "1", "2", "3"], "roi_sampling_ratio": 2,
    "mask_head_channels": 256, "mask_head_layers": 4, "box_detections_per_img": 300, "box_score_thresh": 1e-4,
}
QUICK_MODEL_CFG = {"backbone": "tiny", "roi_feature_levels": ["0", "1", "2"], "rpn_post_nms_top_n_test": 200,
                   "box_detections_per_img": 100, "box_score_thresh": 1e-4}
STAGES = ("resize", "backbone", "rpn", "box_head", "postprocess", "mask_head", "masks_to_results")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="autocast dtype (default fp32)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--num-classes", type=int, default=1203, help="foreground classes (default 1203)")
    parser.add_argument("--width", type=int, default=640, help="original image width (default 640)")
    parser.add_argument("--height", type=int, default=480, help="original image height (default 480)")
    parser.add_argument("--short-side", type=int, default=800, help="test short side (default 800)")
    parser.add_argument("--max-size", type=int, default=1333, help="test long-side cap (default 1333)")
    parser.add_argument("--candidates-per-roi", type=float, default=20.0,
                        help="mean (RoI, class) pairs above the score threshold per RoI (default 20; 0 = flat)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before the rounds (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny backbone, 160 px, 100 classes: a smoke test")
    parser.add_argument("--name", default=None, help="results name (default inference_throughput_<device>_<dtype>)")
    parser.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ models and data


def box_classifier(heads: torch.nn.Module) -> torch.nn.Module:
    """The box classifier of single-stage RoI heads (their ``classifiers()``). The stock side is torchvision's
    one-stage ``RoIHeads``: cascade / htc heads have no stock twin, so they stop here (benchmarks/roi_heads_cost.py
    and multiscale_memory.py --roi-heads time them)."""
    classifiers = heads.classifiers()
    if len(classifiers) != 1:
        raise SystemExit(f"inference_throughput: RoI heads with {len(classifiers)} box stages have no stock "
                         "torchvision counterpart; this benchmark compares standard (one-stage) heads")
    return classifiers[0]


def build_models(model_cfg: dict, num_classes: int, device: torch.device) -> tuple[torch.nn.Module, GeneralizedRCNN]:
    """(ours, stock): our Detector, and torchvision's GeneralizedRCNN over the same modules and weights."""
    torch.manual_seed(0)
    ours = build_detector(model_cfg, num_classes).eval()
    heads = ours.roi_heads
    predictor = FastRCNNPredictor(heads.box_head_dim, num_classes + 1)
    predictor.cls_score = box_classifier(heads).cls_score
    predictor.bbox_pred = heads.box_predictor.box_regressor.bbox_pred
    stock_heads = RoIHeads(
        heads.box_roi_pool, heads.box_head, predictor, 0.5, 0.5, 512, 0.25, None,
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
        heads.mask_roi_pool, heads.mask_head, heads.mask_predictor,
    )
    cfg = ours.model_cfg
    transform = GeneralizedRCNNTransform(cfg["min_size"], cfg["max_size"], cfg["image_mean"], cfg["image_std"])
    stock = GeneralizedRCNN(ours.backbone, ours.rpn, stock_heads, transform).eval()
    return ours.to(device), stock.to(device)


def make_images(count: int, height: int, width: int, seed: int = 0) -> list[torch.Tensor]:
    """Smooth random colour fields with blobs (float [3, H, W] in 0..1), so the RPN has edges to propose on."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        coarse = torch.rand((1, 3, 6, 8), generator=generator)
        image = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
        for _ in range(8):
            h, w = (int(v) for v in torch.randint(20, max(21, height // 2), (2,), generator=generator))
            y, x = int(torch.randint(0, height - h + 1, (1,), generator=generator)), int(
                torch.randint(0, width - w + 1, (1,), generator=generator))
            image[:, y:y + h, x:x + w] = torch.rand((3, 1, 1), generator=generator)
        images.append(image)
    return images


def calibrate_scores(model: torch.nn.Module, inputs: list[torch.Tensor], target: float) -> float:
    """Scale the classifier's weights and bias by one factor so that on average ``target`` (RoI, class) pairs per RoI
    pass the score threshold on ``inputs``; returns the factor (1 with ``target`` 0)."""
    if target <= 0:
        return 1.0
    heads = model.roi_heads
    with torch.inference_mode():
        image_list, _ = model.transform(inputs)
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
        logits = box_classifier(heads)(box_features).float()

    def passing(factor: float) -> float:
        probs = torch.softmax(logits * factor, dim=-1)[:, 1:]
        return float((probs > heads.score_thresh).sum(dim=1).float().mean())

    low, high = 1.0, 1.0
    while passing(high) > target and high < 1e6:
        high *= 2
    for _ in range(40):
        middle = (low * high) ** 0.5
        low, high = (middle, high) if passing(middle) > target else (low, middle)
    layer = box_classifier(heads).cls_score
    with torch.no_grad():
        layer.weight.mul_(high)
        layer.bias.mul_(high)
    return high


# ----------------------------------------------------------------------------------------------------- the runs


class StageTimer:
    """Seconds per named stage, with the device synchronised at each stage boundary."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] += time.perf_counter() - start


def encode_full_masks(masks: torch.Tensor, threshold: float = 0.5) -> list[dict]:
    """Stock users' LVIS masks: threshold the full-image [N, 1, H, W] probabilities and encode with pycocotools."""
    binary = (masks[:, 0] >= threshold).to(torch.uint8).cpu().numpy()
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def resize_for_test(images: list[torch.Tensor], short_side: int, max_size: int) -> tuple[list, list]:
    """Each image at the test size (our test transform), and the (sx, sy) that maps it back to the original."""
    inputs, scales = [], []
    for image in images:
        height, width = image.shape[-2:]
        size = resized_size(height, width, short_side, max_size)
        inputs.append(resize(image, {}, size)[0])
        scales.append((width / size[1], height / size[0]))
    return inputs, scales


def shared_stages(model: torch.nn.Module, images: list[torch.Tensor], short_side: int, max_size: int,
                  timer: StageTimer) -> tuple:
    """The stages both paths run alike (the same modules): resize and normalise, backbone, RPN, and the box head up
    to its features (timed as box_head; each path adds its predictor). Returns (image_list, features, proposals,
    box_features, scales back to the original sizes)."""
    heads = model.roi_heads
    with timer.stage("resize"):
        inputs, scales = resize_for_test(images, short_side, max_size)
        image_list, _ = model.transform(inputs)
    with timer.stage("backbone"):
        features = model.backbone(image_list.tensors)
    with timer.stage("rpn"):
        proposals, _ = model.rpn(image_list, features)
    with timer.stage("box_head"):
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
    return image_list, features, proposals, box_features, scales


def run_stock(model: GeneralizedRCNN, images: list[torch.Tensor], short_side: int, max_size: int,
              timer: StageTimer) -> list[dict]:
    """torchvision's inference path, stage by stage (the calls of GeneralizedRCNN.forward and RoIHeads.forward).

    The images are resized as ours are, so both see the same pixels (torchvision's own resize to the same size
    then scales by exactly 1); boxes and masks come back at the original size through its ``postprocess``."""
    heads = model.roi_heads
    original_sizes = [tuple(image.shape[-2:]) for image in images]
    image_list, features, proposals, box_features, _ = shared_stages(model, images, short_side, max_size, timer)
    with timer.stage("box_head"):
        class_logits, box_regression = heads.box_predictor(box_features)
    with timer.stage("postprocess"):
        boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals,
                                                             image_list.image_sizes)
    with timer.stage("mask_head"):
        mask_logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes,
                                                                                image_list.image_sizes)))
        mask_probs = maskrcnn_inference(mask_logits, labels)
    with timer.stage("masks_to_results"):
        detections = [{"boxes": b, "labels": ll, "scores": s, "masks": m}
                      for b, ll, s, m in zip(boxes, labels, scores, mask_probs)]
        detections = model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        outputs = []
        for detection in detections:
            rles = encode_full_masks(detection["masks"])
            outputs.append({"boxes": detection["boxes"].float().cpu(), "labels": detection["labels"].cpu(),
                            "scores": detection["scores"].float().cpu(), "segmentation": rles})
    return outputs


def run_ours(model: torch.nn.Module, images: list[torch.Tensor], short_side: int, max_size: int,
             timer: StageTimer) -> list[dict]:
    """Our inference path, stage by stage (the calls of Detector inference and inference/results.py)."""
    heads = model.roi_heads
    image_list, features, proposals, box_features, scales = shared_stages(model, images, short_side, max_size,
                                                                          timer)
    with timer.stage("box_head"):
        class_logits, box_regression = heads.box_predictor(box_features)
        scores = box_classifier(heads).scores(class_logits)
        boxes = heads.box_coder.decode(box_regression, proposals)
    with timer.stage("postprocess"):
        detections = heads.postprocess_detections(scores, boxes, proposals, image_list.image_sizes)
    with timer.stage("mask_head"):
        probs = heads.class_mask_probs(features, [d["boxes"] for d in detections], [d["labels"] for d in detections],
                                       image_list.image_sizes)
    with timer.stage("masks_to_results"):
        outputs = []
        for index, (detection, mask_probs, scale, image) in enumerate(zip(detections, probs, scales, images)):
            results = detections_to_lvis_results(index, dict(detection, masks=mask_probs), lambda label: label,
                                                 scale=scale, image_size=tuple(image.shape[-2:]), box_relative=True)
            outputs.append(_as_detections(results))
    return outputs


def _as_detections(results: list[dict]) -> dict:
    """LVIS result dicts of one image back as tensors (xyxy boxes in original pixels) for the comparison."""
    xywh = torch.tensor([r["bbox"] for r in results], dtype=torch.float32).reshape(-1, 4)
    return {"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
            "labels": torch.tensor([r["category_id"] for r in results], dtype=torch.int64),
            "scores": torch.tensor([r["score"] for r in results], dtype=torch.float32),
            "segmentation": [r.get("segmentation") for r in results]}


def agreement(ours: list[dict], stock: list[dict]) -> dict:
    """How far the two top-300s agree: counts, labels in order, the largest box difference, and for up to 50 same-label
    pairs per image the identical RLEs and the median IoU of non-empty masks."""
    same_labels, total, max_box_diff, mask_ious = 0, 0, 0.0, []
    identical_rles, compared_rles = 0, 0
    for a, b in zip(ours, stock):
        count = min(len(a["labels"]), len(b["labels"]))
        total += max(len(a["labels"]), len(b["labels"]))
        same = a["labels"][:count] == b["labels"][:count]
        same_labels += int(same.sum())
        if count:
            max_box_diff = max(max_box_diff, float((a["boxes"][:count] - b["boxes"][:count]).abs().max()))
            for index in torch.nonzero(same).flatten().tolist()[:50]:
                rle_a, rle_b = a["segmentation"][index], b["segmentation"][index]
                identical_rles += int(rle_a == rle_b)
                compared_rles += 1
                if mask_utils.area(rle_a) and mask_utils.area(rle_b):  # IoU of two empty masks is undefined
                    mask_ious.append(float(mask_utils.iou([rle_a], [rle_b], [0])[0][0]))
    return {"detections_ours": sum(len(a["labels"]) for a in ours),
            "detections_stock": sum(len(b["labels"]) for b in stock),
            "same_label_fraction": same_labels / total if total else 1.0,
            "max_box_difference_px": max_box_diff,
            "identical_rle_fraction": identical_rles / compared_rles if compared_rles else None,
            "median_mask_iou_nonempty": statistics.median(mask_ious) if mask_ious else None}


def timed(run: Callable[[StageTimer], list[dict]], device: torch.device, autocast) -> tuple[dict, list[dict]]:
    """One timed batch: per-stage seconds and the outputs."""
    timer = StageTimer(device)
    with torch.inference_mode(), autocast():
        outputs = run(timer)
    return dict(timer.seconds), outputs


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model_cfg = dict(QUICK_MODEL_CFG if args.quick else LVIS_MODEL_CFG)
    num_classes = 100 if args.quick else args.num_classes
    height, width, short_side, max_size = ((120, 160, 160, 267) if args.quick else
                                           (args.height, args.width, args.short_side, args.max_size))
    model_cfg.update(min_size=short_side, max_size=max_size)
    ours, stock = build_models(model_cfg, num_classes, device)
    images = [image.to(device) for image in make_images(args.batch_size, height, width)]
    size = resized_size(height, width, short_side, max_size)
    factor = calibrate_scores(ours, [resize(image, {}, size)[0] for image in images], args.candidates_per_roi)

    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    run = {"stock": lambda timer: run_stock(stock, images, short_side, max_size, timer),
           "ours": lambda timer: run_ours(ours, images, short_side, max_size, timer)}
    for _ in range(args.warmup):
        for name in run:
            timed(run[name], device, autocast)
    rounds: dict[str, list[dict]] = {name: [] for name in run}
    outputs: dict[str, list[dict]] = {}
    for round_index in range(args.rounds):
        for name in run:
            seconds, outputs[name] = timed(run[name], device, autocast)
            rounds[name].append(seconds)
        print(f"round {round_index + 1}: " + ", ".join(
            f"{name} {sum(r[-1].values()):.3f}s" for name, r in rounds.items()), flush=True)

    def median_stages(name: str) -> dict[str, float]:
        return {stage: statistics.median(r.get(stage, 0.0) for r in rounds[name]) for stage in STAGES}

    stages = {name: median_stages(name) for name in run}
    totals = {name: statistics.median(sum(r.values()) for r in rounds[name]) for name in run}
    result = {
        "benchmark": "inference_throughput", "device": str(device), "dtype": args.dtype,
        "batch_size": args.batch_size, "num_classes": num_classes, "image_size": [width, height],
        "test_size": [size[1], size[0]], "model_cfg": model_cfg, "quick": args.quick,
        "candidates_per_roi": args.candidates_per_roi, "classifier_scale": factor, "rounds": args.rounds,
        "machine": machine(device),
        "images_per_s": {name: args.batch_size / totals[name] for name in run},
        "speedup_ours_over_stock": totals["stock"] / totals["ours"],
        "stage_seconds_per_image": {name: {s: v / args.batch_size for s, v in stages[name].items()} for name in run},
        "agreement": agreement(outputs["ours"], outputs["stock"]),
    }
    rows = [{"stage": stage, **{f"{name} s/img": stages[name][stage] / args.batch_size for name in run},
             "stock/ours": stages["stock"][stage] / max(stages["ours"][stage], 1e-9)} for stage in STAGES]
    rows.append({"stage": "total", **{f"{name} s/img": totals[name] / args.batch_size for name in run},
                 "stock/ours": result["speedup_ours_over_stock"]})
    table = markdown_table(rows)
    summary = (f"{num_classes} classes, {width}x{height} images tested at {size[1]}x{size[0]}, batch "
               f"{args.batch_size}, {args.dtype} on {device}; {args.candidates_per_roi:g} candidates per RoI "
               f"(classifier logits x {factor:.3g}). Images/s: ours {result['images_per_s']['ours']:.3g}, stock "
               f"{result['images_per_s']['stock']:.3g} (ours {result['speedup_ours_over_stock']:.2f}x). "
               f"Agreement: {result['agreement']}\n\n")
    print(table + summary)
    name = args.name or f"inference_throughput_{device.type}_{args.dtype}" + ("_quick" if args.quick else "")
    path = write_results(name, result, summary + table, args.out_dir)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main(parse_args())
