"""Dataset statistics for a training annotation file: category_stats.csv, image_repeat_factors.csv, summary.json,
long_tail.png. Runs under Snakemake (rule dataset_stats) or by hand:

    python workflow_scripts/dataset_stats.py --annotations train.json --out-dir DIR [--rfs-threshold 0.001]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from longtail_seg.cli import script_parser
from longtail_seg.data.lvis_io import annotation_arrays, load_lvis
from longtail_seg.plots import plot_long_tail
from longtail_seg.stats import DEFAULT_BGS_BINS, STATS_PARTS, compute_dataset_stats, write_dataset_stats


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--annotations", required=True, help="LVIS/COCO-format training annotation JSON")
    parser.add_argument("--out-dir", required=True, help="folder for the statistics files")
    parser.add_argument("--rfs-threshold", type=float, default=0.001, help="repeat factor threshold t (default 0.001)")
    parser.add_argument("--bgs-bins", type=int, nargs="+", default=list(DEFAULT_BGS_BINS),
                        help="BGS instance-count bin edges (default 10 100 1000)")
    parser.add_argument("--parts", nargs="+", choices=STATS_PARTS, default=list(STATS_PARTS),
                        help="categories: category_stats.csv, summary.json, long_tail.png; repeat_factors: "
                             "image_repeat_factors.csv (default: both)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    data = load_lvis(args.annotations)
    loaded = time.perf_counter()
    stats = compute_dataset_stats(annotation_arrays(data), args.rfs_threshold, args.bgs_bins)
    computed = time.perf_counter()
    write_dataset_stats(stats, args.out_dir, args.parts)
    if "categories" in args.parts:
        plot_long_tail(stats.categories, Path(args.out_dir) / "long_tail.png")
    groups = stats.summary["groups"]
    print(
        f"{stats.summary['images']} images, {stats.summary['instances']} instances, "
        + ", ".join(f"{name}: {g['categories']} categories" for name, g in groups.items())
        + f"; loaded in {loaded - start:.1f}s, statistics in {computed - loaded:.2f}s"
    )


if __name__ == "__main__":
    main(parse_args())
