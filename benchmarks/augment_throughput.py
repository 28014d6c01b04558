"""Augmentation throughput per CPU core: balanced mosaic vs plain multi-scale resize + flip, same in-memory images.

MOSAIC = ``longtail_seg.augment.mosaic.BalancedMosaic`` (3 partners, resize, mosaic, crop, flip, colour jitter)
         with output_size = the image size.
PLAIN  = ``longtail_seg.data.transforms.build_train_transforms`` (short side from [0.875 S, 1.125 S], long side
         <= 1.875 S, flip), the pipeline the mosaic replaces; S = 128 gives the demo's [112, 144] / 240.

Both read images and masks already decoded in memory (no PNG/RLE decoding), single-threaded
(``torch.set_num_threads(1)``, what a DataLoader worker gets), so the numbers are samples/s per core. Rounds
alternate PLAIN, MOSAIC, ... so background load hits both alike.

    python benchmarks/augment_throughput.py [--seconds 3] [--rounds 2] [--sizes 128:4 1024:15]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from longtail_seg.augment.mosaic import BalancedMosaic
from longtail_seg.data.transforms import build_train_transforms
from longtail_seg.io_utils import atomic_write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["128:4", "1024:15"],
                        help="SIZE:INSTANCES pairs (default: 128:4 1024:15)")
    parser.add_argument("--num-images", type=int, default=8, help="in-memory images per size (default 8)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per round and method (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--json-out", help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


class InMemoryDataset(torch.utils.data.Dataset):
    """Decoded samples held in memory, LVISDetectionDataset-like (image_ids, (image, target) items)."""

    def __init__(self, samples: list, image_ids: list[int]) -> None:
        self.samples, self.image_ids = samples, image_ids

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.samples[index]


def synthetic_sample(image_id: int, size: int, num_instances: int, rng: np.random.Generator):
    """Noise image with ``num_instances`` ellipses and rectangles of 1/16 to 1/3 of the side."""
    image = torch.from_numpy(rng.random((3, size, size), dtype=np.float32))
    masks = np.zeros((num_instances, size, size), dtype=np.uint8)
    boxes = []
    for k in range(num_instances):
        w, h = rng.integers(size // 16, size // 3, 2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        if k % 2:
            yy, xx = np.mgrid[:h, :w]
            masks[k, y0 : y0 + h, x0 : x0 + w] = (((xx + 0.5) / w - 0.5) ** 2 + ((yy + 0.5) / h - 0.5) ** 2) <= 0.25
        else:
            masks[k, y0 : y0 + h, x0 : x0 + w] = 1
        boxes.append([x0, y0, x0 + w, y0 + h])
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32),
              "labels": torch.from_numpy(rng.integers(1, 100, num_instances)),
              "masks": torch.from_numpy(masks), "image_id": image_id, "orig_size": (size, size)}
    return image, target


def samples_per_second(make_sample, seconds: float) -> float:
    """Samples produced per second over about ``seconds`` (after one warm-up sample)."""
    make_sample(0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        make_sample(count)
        count += 1
    return count / (time.perf_counter() - start)


def benchmark_size(size: int, num_instances: int, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    image_ids = list(range(1, args.num_images + 1))
    dataset = InMemoryDataset([synthetic_sample(i, size, num_instances, rng) for i in image_ids], image_ids)
    weights = rng.uniform(1.0, 4.0, len(dataset))
    mosaic = BalancedMosaic(dataset, weights, output_size=size)
    plain = build_train_transforms([round(0.875 * size), round(1.125 * size)], round(1.875 * size), flip_prob=0.5)
    n = len(dataset)
    methods = {"plain": lambda i: plain(*dataset[i % n]), "mosaic": lambda i: mosaic[i % n]}
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, make_sample in methods.items():
            rates[name].append(samples_per_second(make_sample, args.seconds))
    best = {name: max(values) for name, values in rates.items()}
    return {"size": size, "instances": num_instances, "plain_per_s": best["plain"], "mosaic_per_s": best["mosaic"],
            "mosaic_over_plain": best["mosaic"] / best["plain"], "rounds": rates}


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    results = []
    print(f"{'image':>10} {'inst':>5} {'plain/s':>9} {'mosaic/s':>9} {'mosaic/plain':>13}  (samples/s, 1 thread)")
    for spec in args.sizes:
        size, num_instances = (int(v) for v in spec.split(":"))
        row = benchmark_size(size, num_instances, args)
        results.append(row)
        print(f"{size:>5}x{size:<4} {num_instances:>5} {row['plain_per_s']:>9.1f} {row['mosaic_per_s']:>9.1f} "
              f"{row['mosaic_over_plain']:>13.2f}", flush=True)
    if args.json_out:
        atomic_write_json(args.json_out, results, indent=2)
    return results


if __name__ == "__main__":
    main()
