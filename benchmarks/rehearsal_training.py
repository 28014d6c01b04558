"""A short training of the LVIS rehearsal's model on one device, without DDP: what the training rule runs, at
LVIS's shape (configs/lvis_rehearsal.yaml: ResNet-50 FPN, 1203 classes, short side 640-800, COCO-sized images).

Generates a few of the rehearsal's images, their repeat factors (the dataset_stats step), resolves the model and
training settings from config.yaml + configs/lvis_rehearsal.yaml as the workflow does, and runs
workflow_scripts/train.py in this process for ``--iterations`` iterations. Reports images/s after the first log
window, the losses (finite, or the run fails), and peak memory (CUDA allocator peak, or the process's peak RSS).

    python benchmarks/rehearsal_training.py --device cuda --iterations 40   # on a GPU (bf16 autocast: train.amp)
    python benchmarks/rehearsal_training.py --quick                         # CPU: 2 iterations
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, markdown_table, status_kib, write_results  # noqa: E402

from longtail_seg.cli import load_workflow_script  # noqa: E402
from longtail_seg.data.synthetic_lvis import LVIS_MIN_NUM_TRAIN, generate_lvis_dataset  # noqa: E402
from longtail_seg.runtime import resolve_device  # noqa: E402
from longtail_seg.workflow_config import (  # noqa: E402
    load_configfiles,
    model_job_settings,
    training_job_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = ("config.yaml", "configs/lvis_rehearsal.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--num-images", type=int, default=None,
                        help="training images to generate (default and least: 120)")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations (40; quick 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the rehearsal's train.batch_size")
    parser.add_argument("--log-period", type=int, default=None, help="iterations per metrics row (5; quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="2 iterations, a metrics row each")
    parser.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    return parser.parse_args(argv)


def rehearsal_config() -> dict[str, Any]:
    """config.yaml with configs/lvis_rehearsal.yaml merged in, as Snakemake merges --configfile."""
    return load_configfiles(*(REPO_ROOT / name for name in CONFIG_FILES))


def prepare_data(folder: Path, config: dict[str, Any], num_images: int) -> tuple[Path, Path, Path]:
    """The rehearsal's generator (its seed) for ``num_images`` training images, and their repeat factors."""
    synthetic = config["datasets"][config["dataset"]]["synthetic"]
    paths = generate_lvis_dataset(folder / "data", seed=synthetic["seed"], num_train=num_images, num_val=1,
                                  num_unlabeled=1)
    stats_dir = folder / "stats"
    stats = load_workflow_script("dataset_stats")
    stats.main(stats.parse_args([
        "--annotations", str(paths["train"]), "--out-dir", str(stats_dir),
        "--rfs-threshold", str(config["stats"]["rfs_threshold"]),
        "--bgs-bins", *[str(b) for b in config["stats"]["bgs_bins"]],
    ]))
    return paths["train"], paths["image_root"], stats_dir / "image_repeat_factors.csv"


def main(args: argparse.Namespace) -> dict[str, Any]:
    iterations = args.iterations or (2 if args.quick else 40)
    log_period = args.log_period or (1 if args.quick else 5)
    num_images = args.num_images or LVIS_MIN_NUM_TRAIN
    device = resolve_device(args.device)
    config = rehearsal_config()
    model_cfg = model_job_settings(config)
    train_cfg = {**training_job_settings(config, "representation", "train"), "max_iterations": iterations,
                 "epochs": 1000}
    if args.batch_size:
        train_cfg["batch_size"] = args.batch_size
    run_cfg = {"log_period": log_period, "checkpoint_period": 10**9, "num_workers": 2 if device.type == "cuda" else 0,
               "progress_bar": False, "tensorboard": False}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        annotations, image_root, repeat_factors = prepare_data(Path(tmp), config, num_images)
        out_dir = Path(tmp) / "model"
        argv = ["--train-annotations", str(annotations), "--image-root", str(image_root),
                "--repeat-factors", str(repeat_factors), "--model-cfg", json.dumps(model_cfg),
                "--train-cfg", json.dumps(train_cfg), "--run-cfg", json.dumps(run_cfg), "--out-dir", str(out_dir),
                "--device", str(device)] + (["--threads", str(args.threads)] if args.threads else [])
        train_script = load_workflow_script("train")
        start = time.perf_counter()
        train_script.main(train_script.parse_args(argv))
        wall = time.perf_counter() - start
        metrics = pd.read_csv(out_dir / "metrics.csv")
    timed = metrics.iloc[1:] if len(metrics) > 1 else metrics
    images_per_s = float(len(timed) * log_period * train_cfg["batch_size"]
                         / (log_period * train_cfg["batch_size"] / timed["images_per_s"]).sum())
    peak = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
            else status_kib("VmHWM") / 2**20)
    result = {
        "device": str(device), "images": num_images, "classes": 1203, "iterations": iterations,
        "batch_size": train_cfg["batch_size"], "amp_bf16": bool(train_cfg.get("amp")) and device.type == "cuda",
        "min_size_range": train_cfg.get("min_size_range"), "max_size": train_cfg.get("max_size"),
        "wall_s": wall, "images_per_s": images_per_s, "peak_memory_gib": peak,
        "first_loss": float(metrics["loss"].iloc[0]), "last_loss": float(metrics["loss"].iloc[-1]),
        "machine": machine(device),
    }
    markdown = markdown_table([{k: result[k] for k in ("device", "batch_size", "amp_bf16", "iterations",
                                                       "images_per_s", "peak_memory_gib", "first_loss",
                                                       "last_loss", "wall_s")}])
    print(markdown)
    write_results(f"rehearsal_training_{device.type}", result, markdown, args.out_dir)
    return result


if __name__ == "__main__":
    main(parse_args())
