"""Cost of the box classifiers at LVIS shape: one training call (forward + loss + backward) and one inference call
(forward + scores), for every registered single classifier type and NorCal calibration on top of softmax.

Shape: 1203 classes, 1024-wide box-head features; training on 2 images x 512 sampled RoIs (25 % foreground,
labels drawn uniformly from the classes), inference on 1000 RoIs. The statistics-driven losses (seesaw, eqlv2) are
timed after 20 warm-up calls, so their accumulated counts / gradients are non-trivial. Rounds alternate the types so
background load hits all alike; the median round is reported.

    python benchmarks/classifier_losses.py [--device cuda] [--rounds 5] [--threads 1] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from bench_common import machine, markdown_table, write_results

from longtail_seg.inference.norcal import NorCalClassifier
from longtail_seg.models.classifiers import build_classifier

NUM_CLASSES, FEATURES, TRAIN_ROIS, TEST_ROIS = 1203, 1024, 1024, 1000


def classifier_configs(image_counts: list[int]) -> dict[str, dict[str, Any]]:
    """The timed classifiers by row name."""
    return {
        "softmax": {"type": "softmax"},
        "bgs (4 groups)": {"type": "bgs", "class_groups": [1 + (j % 4) for j in range(NUM_CLASSES)]},
        "seesaw": {"type": "seesaw"},
        "sigmoid": {"type": "sigmoid"},
        "focal (gamma 2)": {"type": "sigmoid", "focal_gamma": 2.0},
        "eqlv2": {"type": "eqlv2"},
        "federated (50 classes)": {"type": "federated", "image_counts": image_counts},
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, argument: Any, device: torch.device) -> float:
    """Seconds one call of ``fn(argument)`` takes (device synchronised around it)."""
    _synchronize(device)
    start = time.perf_counter()
    fn(argument)
    _synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    image_counts = torch.randint(1, 2000, (NUM_CLASSES,)).tolist()
    classifiers = {name: build_classifier(cfg, FEATURES, NUM_CLASSES).to(device)
                   for name, cfg in classifier_configs(image_counts).items()}
    classifiers["softmax + NorCal"] = NorCalClassifier(classifiers["softmax"], image_counts, 0.6).to(device)
    features = torch.relu(torch.randn(TRAIN_ROIS, FEATURES, device=device))
    labels = torch.where(torch.rand(TRAIN_ROIS, device=device) < 0.25,
                         torch.randint(1, NUM_CLASSES + 1, (TRAIN_ROIS,), device=device), 0)
    test_features = torch.relu(torch.randn(TEST_ROIS, FEATURES, device=device))

    def train_step(classifier) -> None:
        classifier.zero_grad(set_to_none=True)
        classifier.loss(classifier(features), labels).backward()

    def infer(classifier) -> None:
        with torch.no_grad():
            classifier.scores(classifier(test_features))

    for classifier in classifiers.values():
        for _ in range(20):
            train_step(classifier)
    times: dict[str, dict[str, list[float]]] = {name: {"train": [], "infer": []} for name in classifiers}
    for _ in range(args.rounds):
        for name, classifier in classifiers.items():
            times[name]["train"].append(time_call(train_step, classifier, device))
            times[name]["infer"].append(time_call(infer, classifier, device))
    rows = [{"classifier": name, "train_ms": 1000 * statistics.median(t["train"]),
             "infer_ms": 1000 * statistics.median(t["infer"])} for name, t in times.items()]
    result = {"shape": {"classes": NUM_CLASSES, "features": FEATURES, "train_rois": TRAIN_ROIS,
                        "test_rois": TEST_ROIS}, "rounds": args.rounds, "device": str(device), "rows": rows,
              "machine": machine(device)}
    markdown = (f"Per call, median of {args.rounds} alternating rounds on {device}; milliseconds. train: forward + "
                f"loss + backward on {TRAIN_ROIS} RoIs; infer: forward + scores on {TEST_ROIS} RoIs; {NUM_CLASSES} "
                f"classes, {FEATURES}-wide features.\n\n" + markdown_table(rows))
    print(markdown)
    write_results("classifier_losses", result, markdown, args.out_dir)


if __name__ == "__main__":
    main()
