"""Subprocess entry for the resume-after-kill test: train the test model on fake data, print a JSON result.

Usage: python -m tests.engine._train_worker OUT_DIR MAX_ITERATIONS
"""

from __future__ import annotations

import json
import sys

import torch

from longtail_seg.engine.train import train
from longtail_seg.models.detector import build_detector
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, OrderedSampler, collate


def main(argv: list[str]) -> None:
    out_dir, max_iterations = argv[0], int(argv[1])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dataset = FakeDetectionDataset(num_images=8, size=48)
    model = build_detector(TEST_MODEL_CFG, dataset.num_classes)
    cfg = {"batch_size": 2, "epochs": 1000, "max_iterations": max_iterations, "lr": 1e-3, "warmup_iters": 5,
           "checkpoint_period": 4, "log_period": 2, "num_workers": 0, "progress_bar": False, "seed": 3}
    result = train(model, dataset, OrderedSampler(len(dataset)), cfg, out_dir, "cpu", collate_fn=collate)
    print(json.dumps({"iteration": result.iteration, "resumed_from": result.resumed_from_iteration}))


if __name__ == "__main__":
    main(sys.argv[1:])
