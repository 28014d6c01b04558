"""Representation learning (stage 1): train Mask R-CNN end to end -> OUT_DIR/model_final.pth, OUT_DIR/metrics.csv.

Runs under Snakemake (rule train_representation), by hand, or one process per GPU under torchrun / srun:

    python workflow_scripts/train.py --train-annotations train.json --image-root images/ \
        --repeat-factors image_repeat_factors.csv --model-cfg '{"backbone": "tiny"}' \
        --train-cfg '{"epochs": 12, "batch_size": 8}' --out-dir results/demo/models/representation
    torchrun --standalone --nproc_per_node=8 workflow_scripts/train.py ...   # same arguments

A killed run restarted with the same arguments resumes from OUT_DIR/checkpoints/last.pth.
"""

from __future__ import annotations

import argparse
import logging
import time

from longtail_seg.augment.pipeline import build_training_data
from longtail_seg.cli import (
    add_training_run_arguments,
    finish_training_run,
    parse_json_object,
    script_parser,
    training_config,
)
from longtail_seg.data.dataset import collate_detection
from longtail_seg.engine.checkpoint import input_fingerprint
from longtail_seg.engine.config import TrainConfig
from longtail_seg.engine.train import train
from longtail_seg.models.category_counts import fill_image_counts
from longtail_seg.models.config import resolve_model_cfg
from longtail_seg.models.detector import build_detector
from longtail_seg.runtime import init_distributed_mode, seed_everything, set_torch_threads
from longtail_seg.sampling import build_sampler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--train-annotations", required=True, help="LVIS/COCO-format training annotation JSON")
    parser.add_argument("--image-root", required=True, help="folder the images' file names are relative to")
    parser.add_argument("--repeat-factors", help="image_repeat_factors.csv (needed for sampler: repeat_factor)")
    parser.add_argument("--model-cfg", default="{}", help="JSON object: the config's `model:` section")
    parser.add_argument("--category-stats",
                        help="category_stats.csv of the dataset statistics step (needed by a federated classifier "
                             "without image_counts in model.classifier)")
    parser.add_argument("--train-cfg", default="{}", help="JSON object: the config's `train:` section")
    parser.add_argument("--mosaic-cfg", default="{}",
                        help="JSON object: the config's augment.mosaic section (used with mosaic: true in --train-cfg)")
    add_training_run_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_torch_threads(args.threads)
    model_cfg = resolve_model_cfg(parse_json_object(args.model_cfg, "--model-cfg"))
    train_cfg = training_config(TrainConfig, args.train_cfg, args.run_cfg)
    rank, world_size, device = init_distributed_mode(args.device)

    if (train_cfg.sampler == "repeat_factor" or train_cfg.mosaic) and not args.repeat_factors:
        raise SystemExit("train.sampler repeat_factor and train.mosaic need --repeat-factors image_repeat_factors.csv")
    mosaic_cfg = parse_json_object(args.mosaic_cfg, "--mosaic-cfg")
    try:
        data = build_training_data(args.train_annotations, args.image_root, train_cfg,
                                   repeat_factor_csv=args.repeat_factors, mosaic_cfg=mosaic_cfg)
    except ValueError as error:
        raise SystemExit(f"train: {error}") from None
    dataset = data.base
    sampler = build_sampler(
        train_cfg.sampler, len(dataset), repeat_factors=data.repeat_factors, image_ids=dataset.image_ids,
        seed=train_cfg.seed, num_replicas=world_size, rank=rank,
    )
    seed_everything(train_cfg.seed)  # the initial weights, too, follow train.seed
    # federated loss: per-class training image counts from the statistics, kept in the checkpoint's model config
    try:
        model_cfg["classifier"] = fill_image_counts(model_cfg["classifier"], args.category_stats, dataset.category_ids)
    except ValueError as error:
        raise SystemExit(f"train: model.classifier: {error}") from None
    model = build_detector(model_cfg, dataset.num_classes)
    if rank == 0:
        params = sum(p.numel() for p in model.parameters())
        print(f"{len(dataset)} images, {dataset.num_classes} classes, {params / 1e6:.2f} M parameters, "
              f"{world_size} process(es) on {device}, sampler {train_cfg.sampler}, "
              f"mosaic {'on' if train_cfg.mosaic else 'off'}", flush=True)
    start = time.perf_counter()
    # a checkpoint resumes only with the same inputs: other data or settings (a Snakemake rerun) start over
    fingerprint = input_fingerprint(
        {"model": model_cfg, "mosaic": mosaic_cfg if train_cfg.mosaic else None},
        {"train_annotations": args.train_annotations, "repeat_factors": args.repeat_factors},
    )
    result = train(model, data.dataset, sampler, train_cfg, args.out_dir, device, model_cfg=model_cfg,
                   category_ids=dataset.category_ids, collate_fn=collate_detection, fingerprint=fingerprint)
    finish_training_run(result, "trained", time.perf_counter() - start, rank)


if __name__ == "__main__":
    main(parse_args())
