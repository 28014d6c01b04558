"""Peak memory and time per image of single-scale and multi-scale (+ flip, mask voting) inference at LVIS shape:
keeping every view's features for mask voting (before #12) vs one view at a time (``inference/tta.py``).

One 640 x 480 image, a ResNet-50 FPN built by ``build_detector`` at LVIS settings (1203 classes, 1000 test
proposals, RoIAlign on 4 FPN levels, score threshold 1e-4, 300 detections), untrained: the classifier's background
bias is raised and 20 classes favoured, so that ~20k (RoI, class) pairs pass the threshold, as with a trained model,
and a few hundred detections come out. Variants, each in a fresh process (its resident high-water mark above the
level after building the model, and its wall time):

single       = single-scale inference (short side 800): ``predict_dataset`` (``Detector.detect``, box-crop RLEs);
before       = the report's five scales (short sides 800-1600, long side <= 2400) + flip, soft-NMS merge,
               scale-adaptive ranges, mask voting, as before #12: every view's features kept for the mask step, the
               voted masks pasted into the full image, then encoded;
after        = the same test through ``predict_dataset_multiscale``: one view's features alive at a time (the largest
               mask view's kept from the box pass, the others recomputed), voted masks encoded from their box crops;
recompute_all= ``after`` with every view's features recomputed (none kept): what keeping the largest view saves;
largest_view = ``after`` with the largest view alone (short side 1600, unflipped): the floor one view sets.

The results of ``before``, ``after`` and ``recompute_all`` are compared (they must be identical). ``--roi-heads
cascade`` or ``htc`` measures those heads instead (every stage's classifier gets the same bias, so the stages' mean
score passes as many pairs).

    python benchmarks/multiscale_memory.py [--threads 2] [--variants single,before,after,recompute_all]
    python benchmarks/multiscale_memory.py --quick --roi-heads cascade
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import machine, markdown_table, status_kib, write_results
from torchvision.models.detection.roi_heads import paste_masks_in_image

from longtail_seg.data.transforms import resize, resized_size
from longtail_seg.inference import tta
from longtail_seg.inference.config import TestConfig
from longtail_seg.inference.predict import predict_dataset
from longtail_seg.inference.results import detections_to_lvis_results
from longtail_seg.models.detector import build_detector
from longtail_seg.models.registry import ROI_HEADS

LVIS_MODEL_CFG = {
    "backbone": "resnet50", "fpn_channels": 256, "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
    "box_head_dim": 1024, "roi_feature_levels": ["0", "1", "2", "3"], "roi_sampling_ratio": 2,
    "mask_head_channels": 256, "mask_head_layers": 4, "box_detections_per_img": 300, "box_score_thresh": 1e-4,
}
MULTI_SCALE = {"scales": [800, 1000, 1200, 1400, 1600], "max_size": 2400, "batch_size": 1, "flip": True,
               "merge": "soft_nms", "mask_voting": True,
               "scale_ranges": [[96, 100000], [48, 100000], [0, 100000], [0, 192], [0, 96]]}
QUICK_MODEL_CFG = {"backbone": "tiny", "roi_feature_levels": ["0", "1", "2"], "box_detections_per_img": 100}
QUICK_MULTI_SCALE = {"scales": [96, 128], "max_size": 400, "batch_size": 1, "flip": True, "merge": "soft_nms",
                     "mask_voting": True}
VARIANTS = ("single", "before", "after", "recompute_all", "largest_view")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--roi-heads", choices=sorted(ROI_HEADS), default="standard",
                        help="model.roi_heads of the measured model (default standard)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--quick", action="store_true", help="tiny backbone, 100 classes, two small scales: a smoke "
                        "test in seconds (results written as multiscale_memory_quick)")
    parser.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    return parser.parse_args(argv)


class OneImage(torch.utils.data.Dataset):
    """A 640 x 480 image (smooth colour field with blocks), optionally resized to a short side (single scale)."""

    def __init__(self, short_side: int | None = None) -> None:
        gen = torch.Generator().manual_seed(0)
        image = F.interpolate(torch.rand((1, 3, 6, 8), generator=gen), size=(480, 640), mode="bilinear",
                              align_corners=False)[0]
        for _ in range(8):
            h, w = (int(v) for v in torch.randint(20, 240, (2,), generator=gen))
            y, x = int(torch.randint(0, 480 - h, (1,), generator=gen)), int(torch.randint(0, 640 - w, (1,),
                                                                                           generator=gen))
            image[:, y:y + h, x:x + w] = torch.rand((3, 1, 1), generator=gen)
        if short_side is not None:
            image = resize(image, {}, resized_size(480, 640, short_side, 1333))[0]
        self.image = image

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return self.image, {"image_id": 1, "orig_size": (480, 640)}

    def category_of(self, label: int) -> int:
        return label


def lvis_shaped_model(quick: bool = False, roi_heads: str = "standard") -> torch.nn.Module:
    """The untrained ResNet-50 FPN with a trained-like number of passing (RoI, class) pairs."""
    torch.manual_seed(0)
    num_classes = 100 if quick else 1203
    model_cfg = dict(QUICK_MODEL_CFG if quick else LVIS_MODEL_CFG, roi_heads=roi_heads)
    model = build_detector(model_cfg, num_classes=num_classes).eval()
    for classifier in model.roi_heads.classifiers():  # one per box stage (a cascade's are averaged)
        bias = classifier.cls_score.bias
        with torch.no_grad():
            bias.zero_()
            bias[0] = 10.0  # background
            bias[1:num_classes + 1:60] = 3.0  # 20 classes (of 1203): p ~ 8e-4 > 1e-4, the others ~ 4e-5
    return model


def before_multiscale(model: torch.nn.Module, dataset: OneImage, cfg: TestConfig) -> list[dict]:
    """Multi-scale testing as before #12: every view's features kept, voted masks pasted into the full image."""
    views, ranges = tta.augmented_views(cfg.test_scales, cfg.flip), cfg.view_size_ranges()
    image, target = dataset[0]
    with torch.inference_mode():
        view_features, per_view = [], []
        for view in views:
            features, detections = tta.run_view(model, [image], view, cfg.max_size)
            view_features.append(features)
            per_view.append(detections)
        merged = tta.merge_detections([d[0] for d in per_view], ranges, cfg.merge, cfg.merge_iou, cfg.max_dets,
                                      cfg.soft_nms_method, model.roi_heads.score_thresh)
        probs = tta.vote_masks(model, view_features, [merged["boxes"]], [merged["labels"]])[0]
        full = paste_masks_in_image(probs, merged["boxes"], tuple(image.shape[-2:]))
        return detections_to_lvis_results(target["image_id"], dict(merged, masks=full), dataset.category_of,
                                          cfg.mask_threshold, cfg.max_dets)


def recompute_all_multiscale(model: torch.nn.Module, dataset: OneImage, cfg: TestConfig) -> list[dict]:
    """``predict_dataset_multiscale`` with no view's features kept from the box pass: every view recomputed."""
    keep_largest = tta._detect_in_every_view

    def keep_none(model, images, views, max_size, kept_index):
        return keep_largest(model, images, views, max_size, None)

    tta._detect_in_every_view = keep_none
    try:
        return tta.predict_dataset_multiscale(model, dataset, cfg)
    finally:
        tta._detect_in_every_view = keep_largest


def _worker(variant: str, threads: int | None, quick: bool, roi_heads: str, results_path: str, queue) -> None:
    if threads:
        torch.set_num_threads(threads)
    model = lvis_shaped_model(quick, roi_heads)
    cfg = TestConfig.from_dict(QUICK_MULTI_SCALE if quick else MULTI_SCALE)
    with torch.inference_mode():  # first-call set-up outside the measurement
        model.detect([torch.rand(3, 64, 96)])
    with open("/proc/self/clear_refs", "w") as clear_refs:  # this process's own high-water mark, from now
        clear_refs.write("5")
    before = status_kib("VmRSS")
    start = time.perf_counter()
    if variant == "single":
        results = predict_dataset(model, OneImage(short_side=cfg.test_scales[0]), batch_size=1)
    elif variant == "before":
        results = before_multiscale(model, OneImage(), cfg)
    elif variant == "after":
        results = tta.predict_dataset_multiscale(model, OneImage(), cfg)
    elif variant == "largest_view":
        largest = dict(cfg.__dict__, scales=(max(cfg.test_scales),), flip=False, scale_ranges=None)
        results = tta.predict_dataset_multiscale(model, OneImage(), TestConfig(**largest))
    else:
        results = recompute_all_multiscale(model, OneImage(), cfg)
    seconds = time.perf_counter() - start
    Path(results_path).write_text(json.dumps(results))
    queue.put({"variant": variant, "seconds": seconds, "peak_mib": round((status_kib("VmHWM") - before) / 1024),
               "rss_before_mib": round(before / 1024), "detections": len(results)})


def run_variant(variant: str, threads: int | None, quick: bool, roi_heads: str, results_path: str) -> dict:
    """One variant in a fresh process: its time, peak memory and number of results."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_worker, args=(variant, threads, quick, roi_heads, results_path, queue))
    process.start()
    row = queue.get()
    process.join()
    return row


def main(args: argparse.Namespace) -> dict:
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for variant in variants:
            path = str(Path(folder) / f"{variant}.json")
            rows.append(run_variant(variant, args.threads, args.quick, args.roi_heads, path))
            results[variant] = json.loads(Path(path).read_text())
            print(rows[-1], flush=True)
    multi = [v for v in ("before", "after", "recompute_all") if v in results]
    identical = all(results[v] == results[multi[0]] for v in multi)
    multi_scale = QUICK_MULTI_SCALE if args.quick else MULTI_SCALE
    result = {"rows": rows, "multi_scale_results_identical": identical, "multi_scale": multi_scale,
              "model": QUICK_MODEL_CFG if args.quick else LVIS_MODEL_CFG, "roi_heads": args.roi_heads,
              "quick": args.quick, "machine": machine()}
    model = ("tiny backbone, 100 classes (--quick)" if args.quick else "ResNet-50 FPN, 1203 classes") + \
        f", {args.roi_heads} RoI heads"
    markdown = (f"One 640 x 480 image, {model} (untrained, classifier bias set so that few (RoI, class) pairs pass), "
                f"each variant in a fresh process. Multi-scale: {multi_scale}. Results of {', '.join(multi)} "
                f"identical: {identical}.\n\n" + markdown_table(rows))
    print(markdown)
    name = ("multiscale_memory_quick" if args.quick else "multiscale_memory") + \
        ("" if args.roi_heads == "standard" else f"_{args.roi_heads}")
    print(f"-> {write_results(name, result, markdown, args.out_dir)}")
    return result


if __name__ == "__main__":
    main(parse_args())
