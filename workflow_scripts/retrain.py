"""Classifier retraining (stage 2, decoupled): a fresh box classifier on the frozen representation -> OUT_DIR.

Loads the representation-learning detector, replaces its box classifier by a fresh one of --classifier-cfg
(softmax, seesaw, sigmoid, eqlv2, or bgs / federated whose class groups / image counts are filled from
STATS_DIR/category_stats.csv), freezes everything else and
trains only the classifier with the sampler of --train-cfg. With `"mosaic": true` in --train-cfg the images go
through the balanced mosaic (--mosaic-cfg); with --pseudo-annotations the pseudo-labelled unlabeled images join the
training set, strongly augmented (--strong-augment-cfg), with repeat factors recomputed over both
(--rfs-threshold). Writes OUT_DIR/model_final.pth, metrics.csv and checkpoints/ (a killed run resumes). Runs by
hand, under Snakemake, or one process per GPU under torchrun:

    python workflow_scripts/retrain.py --checkpoint results/demo/models/representation/model_final.pth \
        --train-annotations train.json --image-root images/ --stats-dir results/demo/stats \
        --classifier-cfg '{"type": "softmax"}' \
        --train-cfg '{"sampler": "class_aware", "images_per_category": 8, "epochs": 4}' \
        --out-dir results/demo/models/crt_class_aware
    torchrun --standalone --nproc_per_node=8 workflow_scripts/retrain.py ...   # same arguments
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

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
from longtail_seg.engine.config import RetrainConfig
from longtail_seg.engine.retrain import (
    build_retrain_sampler,
    checkpoint_category_ids,
    fill_bgs_groups,
    retrain_classifier,
)
from longtail_seg.models.category_counts import fill_image_counts
from longtail_seg.runtime import init_distributed_mode, set_torch_threads

CATEGORY_STATS = "category_stats.csv"
IMAGE_REPEAT_FACTORS = "image_repeat_factors.csv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="representation-learning model_final.pth")
    parser.add_argument("--train-annotations", required=True, help="LVIS/COCO-format training annotation JSON")
    parser.add_argument("--image-root", required=True, help="folder the images' file names are relative to")
    parser.add_argument("--stats-dir", help=f"folder with {CATEGORY_STATS} (bgs groups, federated image counts) and "
                                            f"{IMAGE_REPEAT_FACTORS} (repeat_factor sampler): the dataset_stats "
                                            "step's output")
    parser.add_argument("--classifier-cfg", default='{"type": "softmax"}',
                        help='JSON object: the new classifier, e.g. {"type": "bgs", "others_sample_ratio": 8}')
    parser.add_argument("--train-cfg", default="{}",
                        help="JSON object: the retraining section (train keys; sampler class_aware|repeat_factor|"
                             "uniform; images_per_category)")
    parser.add_argument("--mosaic-cfg", default="{}",
                        help="JSON object: the config's augment.mosaic section (used with mosaic: true in --train-cfg)")
    parser.add_argument("--pseudo-annotations",
                        help="LVIS JSON of pseudo-labelled images (rule pseudo_labels) to train on together with the "
                             "training set; their file names are relative to --image-root")
    parser.add_argument("--strong-augment-cfg", default="{}",
                        help="JSON object: the config's augment.strong section (pseudo-labelled images only)")
    parser.add_argument("--rfs-threshold", type=float,
                        help="RFS threshold t for the repeat factors of train + pseudo (stats.rfs_threshold)")
    add_training_run_arguments(parser)
    return parser.parse_args(argv)


def _stats_file(stats_dir: str | None, name: str) -> Path | None:
    """STATS_DIR/name if it exists (None without --stats-dir); a missing file is an error naming it."""
    if stats_dir is None:
        return None
    path = Path(stats_dir) / name
    if not path.exists():
        raise SystemExit(f"--stats-dir {stats_dir}: {name} not found; run workflow_scripts/dataset_stats.py first")
    return path


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_torch_threads(args.threads)
    classifier_cfg = parse_json_object(args.classifier_cfg, "--classifier-cfg")
    train_cfg = training_config(RetrainConfig, args.train_cfg, args.run_cfg)
    if train_cfg.sampler == "repeat_factor" and args.stats_dir is None:
        raise SystemExit(f"sampler repeat_factor: pass --stats-dir (the folder with {IMAGE_REPEAT_FACTORS})")
    category_ids = checkpoint_category_ids(args.checkpoint)
    category_stats = Path(args.stats_dir) / CATEGORY_STATS if args.stats_dir else None
    classifier_cfg = fill_bgs_groups(classifier_cfg, category_stats, category_ids)  # bgs: groups from the stats
    classifier_cfg = fill_image_counts(classifier_cfg, category_stats, category_ids)  # federated: image counts
    rank, world_size, device = init_distributed_mode(args.device)

    needs_csv = train_cfg.sampler == "repeat_factor" or train_cfg.mosaic
    repeat_factors = _stats_file(args.stats_dir, IMAGE_REPEAT_FACTORS) if needs_csv else None
    mosaic_cfg = parse_json_object(args.mosaic_cfg, "--mosaic-cfg")
    strong_cfg = parse_json_object(args.strong_augment_cfg, "--strong-augment-cfg")
    try:
        data = build_training_data(
            args.train_annotations, args.image_root, train_cfg, category_ids=category_ids, with_masks=False,
            repeat_factor_csv=repeat_factors, mosaic_cfg=mosaic_cfg, pseudo_annotations=args.pseudo_annotations,
            rfs_threshold=args.rfs_threshold, strong_cfg=strong_cfg,
        )
    except ValueError as error:
        raise SystemExit(f"retrain: {error}") from None
    sampler = build_retrain_sampler(train_cfg, data.base, num_replicas=world_size, rank=rank,
                                    repeat_factors=data.repeat_factors)
    dataset = data.dataset
    if rank == 0 and args.pseudo_annotations and data.num_pseudo_images == 0:
        print(f"WARNING: {args.pseudo_annotations} has no pseudo-labelled image: retraining on the training set "
              "only. Lower pseudo_labels.score_threshold or use a stronger teacher.", flush=True)
    if rank == 0:
        print(f"retraining a {classifier_cfg.get('type', 'softmax')} classifier on {args.checkpoint}: "
              f"{len(dataset)} images ({data.num_pseudo_images} pseudo-labelled), {data.base.num_classes} classes, "
              f"sampler {train_cfg.sampler}, mosaic {'on' if train_cfg.mosaic else 'off'}, "
              f"{world_size} process(es) on {device}", flush=True)
    start = time.perf_counter()
    # a checkpoint resumes only with the same inputs: other data or settings (a Snakemake rerun) start over
    pseudo = args.pseudo_annotations is not None
    fingerprint = input_fingerprint(
        {"mosaic": mosaic_cfg if train_cfg.mosaic else None, "strong_augment": strong_cfg if pseudo else None,
         "rfs_threshold": args.rfs_threshold if pseudo else None},
        {"train_annotations": args.train_annotations, "repeat_factors": repeat_factors,
         "category_stats": category_stats, "pseudo_annotations": args.pseudo_annotations},
    )
    result = retrain_classifier(args.checkpoint, dataset, sampler, classifier_cfg, train_cfg, args.out_dir, device,
                                collate_fn=collate_detection, fingerprint=fingerprint)
    finish_training_run(result, "retrained", time.perf_counter() - start, rank)


if __name__ == "__main__":
    main(parse_args())
