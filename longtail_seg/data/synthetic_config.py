"""The ``datasets.NAME.synthetic`` config section: generator modes, their keys and the checks that run when the
workflow builds its DAG (rules/data.smk), before any job. Torch- and NumPy-free, like the other config modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from longtail_seg.config_keys import check_choice, check_int, reject_unknown_keys

# demo: the embedded 192-category demo at one square size; lvis: LVIS v1's 1203 categories at COCO's image sizes.
MODES = ("demo", "lvis")
DEFAULT_MODE = "demo"
COMMON_KEYS = ("mode", "seed", "num_train", "num_val", "num_unlabeled")
MODE_KEYS = {"demo": (*COMMON_KEYS, "image_size"), "lvis": COMMON_KEYS}
# The densest a training image of the lvis mode gets. Every one of the 1203 LVIS categories is in at least one
# training image, the head in more (LVIS's counts scaled to the split): that fits 12 categories per image from 111
# training images on; LVIS_MIN_NUM_TRAIN leaves a margin (tests/data/test_synthetic_lvis.py checks both).
LVIS_MAX_CATEGORIES_PER_IMAGE = 12
LVIS_NUM_CATEGORIES = 1203
LVIS_MIN_NUM_TRAIN = 120
DEMO_MIN_IMAGE_SIZE = 64


def synthetic_mode(settings: Mapping[str, Any]) -> str:
    """The generator mode of a ``synthetic`` section (``demo`` when the key is left out)."""
    return settings.get("mode", DEFAULT_MODE)


def check_synthetic_settings(settings: Mapping[str, Any], path: str) -> None:
    """Raise ``ValueError`` naming ``path`` (e.g. ``datasets.demo.synthetic``) for a setting the generator cannot
    honour: an unknown mode, a key the mode does not read, a demo image too small for its marks, or an lvis train
    split too small to hold every LVIS category."""
    mode = synthetic_mode(settings)
    check_choice(f"{path}.mode", mode, MODES)
    if mode == "lvis" and "image_size" in settings:
        raise ValueError(f"{path}.image_size: the lvis mode draws COCO's image sizes (mostly 640 x 480, 480 x 640, "
                         "640 x 427, ...) and takes no image_size; remove the key")
    reject_unknown_keys(path, settings, MODE_KEYS[mode])
    check_int(f"{path}.seed", settings.get("seed"))
    check_int(f"{path}.num_train", settings.get("num_train"), minimum=1)
    check_int(f"{path}.num_val", settings.get("num_val"), minimum=1)
    check_int(f"{path}.num_unlabeled", settings.get("num_unlabeled"), minimum=0)
    if mode == "demo":
        check_int(f"{path}.image_size", settings.get("image_size"), minimum=DEMO_MIN_IMAGE_SIZE)
    elif settings["num_train"] < LVIS_MIN_NUM_TRAIN:
        raise ValueError(f"{path}.num_train: the lvis mode puts every one of the {LVIS_NUM_CATEGORIES} LVIS "
                         f"categories in at least one training image, at most {LVIS_MAX_CATEGORIES_PER_IMAGE} per "
                         f"image, so it needs num_train >= {LVIS_MIN_NUM_TRAIN}, got {settings['num_train']}")


def check_synthetic_datasets(datasets: Mapping[str, Any]) -> None:
    """``check_synthetic_settings`` on every dataset of ``datasets`` (the config section) with ``source: synthetic``."""
    for name, entry in datasets.items():
        if entry.get("source") == "synthetic":
            check_synthetic_settings(entry["synthetic"], f"datasets.{name}.synthetic")


def synthetic_job_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A ``synthetic`` section as the make_dataset job's tracked parameter: ``mode`` is left out when it is the
    default, so the demo's recorded parameters (and its generated data) stay those from before the key existed."""
    return {key: value for key, value in settings.items() if not (key == "mode" and value == DEFAULT_MODE)}


def make_dataset_arguments(settings: Mapping[str, Any]) -> list[str]:
    """A ``synthetic`` section as workflow_scripts/make_dataset.py options."""
    arguments = ["--mode", synthetic_mode(settings), "--seed", str(settings["seed"])]
    for key in ("num_train", "num_val", "num_unlabeled", "image_size"):
        if key in settings:
            arguments += ["--" + key.replace("_", "-"), str(settings[key])]
    return arguments
