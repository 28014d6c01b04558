"""Data check throughput: images fully decoded per second by ``longtail_seg.data.check.check_dataset``, with one
worker, and with every CPU on a thread pool and on a process pool.

Generates COCO-sized images (640 x 480 JPEGs, quality 90, smooth content plus noise: ~100 KB, like COCO's photos)
and an LVIS-format file with a few polygon annotations per image in a temporary folder, then times the whole
check (JSON, records, segmentations, decoding) per configuration. Rounds alternate the configurations so
background load hits all alike; the median round is reported. Writes the numbers and the machine to JSON.

    python benchmarks/data_check_throughput.py [--num-images 300] [--rounds 3] \
        [--json-out benchmarks/results/data_check_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, features

from longtail_seg.data.check import available_cpus, check_dataset
from longtail_seg.io_utils import atomic_write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "data_check_throughput.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=300, help="generated images (default 300)")
    parser.add_argument("--width", type=int, default=640, help="image width (default 640, COCO's usual)")
    parser.add_argument("--height", type=int, default=480, help="image height (default 480)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per configuration (default 3)")
    parser.add_argument("--workers", type=int, default=None, help="the 'all' worker count (default: every CPU)")
    parser.add_argument("--json-out", default=str(DEFAULT_OUT), help=f"JSON to write (default {DEFAULT_OUT})")
    return parser.parse_args(argv)


def make_dataset(folder: Path, num_images: int, width: int, height: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``num_images`` JPEGs (smooth colour fields + noise) and an LVIS file with 3 box polygons per image."""
    rng = np.random.default_rng(seed)
    image_root = folder / "images"
    image_root.mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.int16)
        pixels = np.clip(field + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)
        name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(image_root / name, quality=90)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for _ in range(3):
            w, h = rng.uniform(20, width / 3), rng.uniform(20, height / 3)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [x, y, w, h], "area": w * h, "segmentation": [polygon], "iscrowd": 0})
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing", "frequency": "f"}]}))
    return path, image_root


def machine() -> dict:
    """What the numbers were measured on: CPU, cores this process may use, Python and Pillow (and libjpeg-turbo)."""
    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(), "cpu": cpu_model, "cpu_count": os.cpu_count(),
        "cpus_available": available_cpus(), "python": platform.python_version(), "pillow": PIL.__version__,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine while measuring
    }


def main(args: argparse.Namespace) -> dict:
    workers = args.workers or available_cpus()
    configs = {"1 worker": (1, "thread"), f"{workers} threads": (workers, "thread"),
               f"{workers} processes": (workers, "process")}
    rates: dict[str, list[float]] = {name: [] for name in configs}
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    machine_before = machine()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        annotations, image_root = make_dataset(Path(tmp), args.num_images, args.width, args.height)
        mean_kb = sum(p.stat().st_size for p in image_root.iterdir()) / args.num_images / 1024
        print(f"{args.num_images} {args.width}x{args.height} JPEGs (mean {mean_kb:.0f} KB) generated in "
              f"{time.perf_counter() - start:.1f}s", flush=True)
        check_dataset(annotations, image_root, workers=1, progress=False)  # warm the page cache
        for round_index in range(args.rounds):
            for name, (count, executor) in configs.items():
                report = check_dataset(annotations, image_root, workers=count, executor=executor, progress=False)
                rates[name].append(report["images_per_s"])
                seconds[name].append(report["seconds"])
            print(f"round {round_index + 1}: " + ", ".join(f"{n} {r[-1]:.0f} img/s" for n, r in rates.items()),
                  flush=True)
    result = {
        "benchmark": "data_check_throughput", "images": args.num_images, "image_size": [args.width, args.height],
        "mean_file_kb": round(mean_kb, 1), "rounds": args.rounds, "machine": machine_before,
        "images_per_s": {name: statistics.median(values) for name, values in rates.items()},
        "check_seconds": {name: statistics.median(values) for name, values in seconds.items()},
    }
    base = result["images_per_s"]["1 worker"]
    print(f"{'configuration':<16} {'img/s':>8} {'speed-up':>9} {'whole check (s)':>16}")
    for name, rate in result["images_per_s"].items():
        print(f"{name:<16} {rate:>8.0f} {rate / base:>8.2f}x {result['check_seconds'][name]:>16.2f}")
    atomic_write_json(args.json_out, result, indent=2)
    print(f"-> {args.json_out}")
    return result


if __name__ == "__main__":
    main(parse_args())
