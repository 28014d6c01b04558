"""Mask encoding per image at LVIS shape: pasting every mask into the full image (before #12) vs pasting each mask
only inside its box at the original size (``inference/mask_rle.py``), side by side in one run.

One image's 300 detections on an 800 x 1216 model input (LVIS-like box sizes: sides log-uniform from 8 to 800 px;
28 x 28 mask probabilities from smooth random logits, about half foreground), turned into LVIS result dicts:

OLD = torchvision's ``paste_masks_in_image`` at the input size, then ``detections_to_lvis_results`` with the
      full-image masks (bilinear resize of every full mask to the original size when it differs, threshold inside
      each box, one ``pycocotools.mask.encode``);
NEW = ``detections_to_lvis_results(..., box_relative=True)``: each box scaled to the original pixels, its mask pasted
      and thresholded inside it, the RLE built from the crop.

Two cases: the original image is 640 x 480 (the model saw it resized), and the original is the input size. Rounds
alternate OLD and NEW so background load hits both alike; the median round is reported. Each method also runs once
in a fresh process for its peak memory (the resident high-water mark above the level before the call). Exactness:
NEW's RLEs equal OLD's when the sizes agree, and torchvision's paste at the original size + pycocotools encode
always.

    python benchmarks/mask_encoding.py [--rounds 3] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import machine, markdown_table, status_kib, write_results
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from longtail_seg.inference.results import detections_to_lvis_results

INPUT_SIZE = (800, 1216)  # (height, width) the model sees
ORIGINAL_SIZE = (480, 640)  # a COCO image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detections", type=int, default=300, help="detections per image (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--device", default="cpu", help="where the masks live: cpu or cuda[:N] (default cpu)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    return parser.parse_args(argv)


def make_detections(num: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """``num`` detections on the input image: xyxy boxes, labels, scores and box-relative [N, 1, 28, 28] masks."""
    gen = torch.Generator().manual_seed(seed)
    height, width = INPUT_SIZE
    sides = torch.exp(torch.empty(num, 2).uniform_(np.log(8), np.log(800), generator=gen))
    sides = torch.minimum(sides, torch.tensor([width, height], dtype=torch.float32))
    low = torch.rand(num, 2, generator=gen) * (torch.tensor([width, height]) - sides)
    boxes = torch.cat([low, low + sides], dim=1)
    logits = F.interpolate(torch.randn(num, 1, 7, 7, generator=gen) * 4, size=(28, 28), mode="bilinear",
                           align_corners=False)
    return {"boxes": boxes.to(device), "labels": torch.randint(1, 1204, (num,), generator=gen).to(device),
            "scores": torch.rand(num, generator=gen).to(device), "masks": logits.sigmoid().to(device)}


def old_path(detections: dict, original_size: tuple[int, int]) -> list[dict]:
    """Before #12: every mask pasted into the full input image, then resized / thresholded / encoded."""
    full = paste_masks_in_image(detections["masks"], detections["boxes"], INPUT_SIZE)
    return detections_to_lvis_results(0, dict(detections, masks=full), range(1, 1204), **_rescaling(original_size))


def new_path(detections: dict, original_size: tuple[int, int]) -> list[dict]:
    """Each mask pasted only inside its box at the original size, its RLE built from the crop."""
    return detections_to_lvis_results(0, detections, range(1, 1204), box_relative=True, **_rescaling(original_size))


def _rescaling(original_size: tuple[int, int]) -> dict:
    """scale and image_size arguments mapping the input image to ``original_size``."""
    if original_size == INPUT_SIZE:
        return {"image_size": INPUT_SIZE}
    return {"scale": (original_size[1] / INPUT_SIZE[1], original_size[0] / INPUT_SIZE[0]), "image_size": original_size}


def torchvision_reference(detections: dict, original_size: tuple[int, int]) -> list[str]:
    """RLE strings of torchvision's postprocess (boxes scaled, masks pasted at the original size) + encode, in the
    results' (score) order."""
    order = torch.argsort(detections["scores"].cpu(), descending=True, stable=True)
    sx, sy = original_size[1] / INPUT_SIZE[1], original_size[0] / INPUT_SIZE[0]
    boxes = detections["boxes"].cpu()[order] * torch.tensor([sx, sy, sx, sy])
    full = paste_masks_in_image(detections["masks"].cpu()[order], boxes, original_size)[:, 0] >= 0.5
    stack = np.asfortranarray(full.permute(1, 2, 0).numpy().astype(np.uint8))
    return [rle["counts"].decode("ascii") for rle in mask_utils.encode(stack)]


def timed(run, detections: dict, original_size: tuple[int, int], device: str) -> tuple[float, list[dict]]:
    """Seconds for one call (device synchronised) and its results."""
    _synchronise(device)
    start = time.perf_counter()
    results = run(detections, original_size)
    _synchronise(device)
    return time.perf_counter() - start, results


def _synchronise(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_worker(method: str, original_size: tuple[int, int], num: int, device: str, threads: int,
                        queue) -> None:
    torch.set_num_threads(threads)
    detections = make_detections(num, device)
    run = old_path if method == "old" else new_path
    run(make_detections(5, device, seed=1), original_size)  # load the code paths before the baseline
    # the high-water mark of this process alone (getrusage's maxrss inherits the parent's), reset to now
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = status_kib("VmRSS")
    run(detections, original_size)
    queue.put(round((status_kib("VmHWM") - before) / 1024, 1))


def peak_memory_mb(method: str, original_size: tuple[int, int], num: int, device: str, threads: int) -> float:
    """Peak resident memory (MiB) one call adds in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_memory_worker, args=(method, original_size, num, device, threads, queue))
    process.start()
    value = queue.get()
    process.join()
    return float(value)


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    detections = make_detections(args.detections, args.device)
    rows = []
    for label, original_size in (("640x480 original", ORIGINAL_SIZE), ("original = input", INPUT_SIZE)):
        old_path(make_detections(5, args.device, seed=1), original_size)  # warm up both paths
        new_path(make_detections(5, args.device, seed=1), original_size)
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.rounds):
            seconds_old, old_results = timed(old_path, detections, original_size, args.device)
            seconds_new, new_results = timed(new_path, detections, original_size, args.device)
            times["old"].append(seconds_old)
            times["new"].append(seconds_new)
        new_counts = [r["segmentation"]["counts"] for r in new_results]
        row = {
            "case": label, "input": f"{INPUT_SIZE[1]}x{INPUT_SIZE[0]}",
            "original": f"{original_size[1]}x{original_size[0]}",
            "detections": args.detections,
            "old_s": statistics.median(times["old"]), "new_s": statistics.median(times["new"]),
            "old_over_new": statistics.median(times["old"]) / statistics.median(times["new"]),
            "identical_to_old": new_results == old_results,
            "identical_to_torchvision_paste_at_original": new_counts == torchvision_reference(detections,
                                                                                              original_size),
        }
        if not args.no_memory:
            for method in ("old", "new"):
                row[f"{method}_peak_mib"] = peak_memory_mb(method, original_size, args.detections, args.device,
                                                           args.threads)
        rows.append(row)
        print(f"{label}: old {row['old_s']:.3f}s new {row['new_s']:.3f}s ({row['old_over_new']:.1f}x)", flush=True)
    result = {"rows": rows, "rounds": args.rounds, "threads": args.threads, "device": args.device,
              "machine": machine(args.device)}
    markdown = (f"Per image, {args.detections} detections, median of {args.rounds} alternating rounds, "
                f"{args.threads} torch thread(s), masks on {args.device}. old = paste into the full input image, "
                "then resize / threshold / encode; new = paste inside each box at the original size, RLE from the "
                "crop. Peak memory: the resident-set high-water mark a call adds in a fresh process.\n\n"
                + markdown_table(rows))
    print(markdown)
    print(f"-> {write_results('mask_encoding', result, markdown, args.out_dir)}")
    return result


if __name__ == "__main__":
    main(parse_args())
