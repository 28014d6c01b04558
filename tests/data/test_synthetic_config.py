"""Tests of the synthetic generator's config checks (what the workflow runs on `datasets.*.synthetic` at DAG build)."""

from __future__ import annotations

import pytest

from longtail_seg.data.synthetic_config import (
    LVIS_MIN_NUM_TRAIN,
    check_synthetic_datasets,
    check_synthetic_settings,
    make_dataset_arguments,
    synthetic_job_settings,
    synthetic_mode,
)

DEMO = {"seed": 0, "image_size": 128, "num_train": 10, "num_val": 2, "num_unlabeled": 0}
LVIS = {"mode": "lvis", "seed": 0, "num_train": 400, "num_val": 4, "num_unlabeled": 4}
PATH = "datasets.x.synthetic"


@pytest.mark.parametrize("settings", [DEMO, {**DEMO, "mode": "demo"}, LVIS, {**LVIS, "num_train": LVIS_MIN_NUM_TRAIN}])
def test_good_settings_pass(settings):
    check_synthetic_settings(settings, PATH)


def test_mode_defaults_to_demo():
    assert synthetic_mode(DEMO) == "demo" and synthetic_mode(LVIS) == "lvis"


BAD = {
    "unknown mode": ({**LVIS, "mode": "coco"}, "datasets.x.synthetic.mode must be one of ['demo', 'lvis'], got 'coco'"),
    "lvis image size": ({**LVIS, "image_size": 640}, "datasets.x.synthetic.image_size: the lvis mode draws COCO's"),
    "lvis too few train images": (
        {**LVIS, "num_train": LVIS_MIN_NUM_TRAIN - 1},
        f"datasets.x.synthetic.num_train: the lvis mode puts every one of the 1203 LVIS categories in at least one "
        f"training image, at most 12 per image, so it needs num_train >= {LVIS_MIN_NUM_TRAIN}, got 119",
    ),
    "demo without image size": ({k: v for k, v in DEMO.items() if k != "image_size"},
                                "datasets.x.synthetic.image_size must be an integer >= 64, got None"),
    "demo image too small": ({**DEMO, "image_size": 48}, "datasets.x.synthetic.image_size must be an integer >= 64"),
    "typo": ({**DEMO, "num_trian": 3}, "datasets.x.synthetic: unknown key(s) ['num_trian']"),
    "string count": ({**LVIS, "num_val": "4"}, "datasets.x.synthetic.num_val must be an integer >= 1, got '4'"),
    "no val": ({**LVIS, "num_val": 0}, "datasets.x.synthetic.num_val must be an integer >= 1, got 0"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_settings_fail_naming_the_key_and_the_fix(case):
    settings, message = BAD[case]
    with pytest.raises(ValueError) as error:
        check_synthetic_settings(settings, PATH)
    assert message in str(error.value)


def test_the_checks_import_neither_torch_nor_numpy():
    """rules/data.smk runs them while Snakemake builds the DAG: they stay light."""
    import subprocess
    import sys

    code = ("import sys, longtail_seg.data.synthetic_config; "
            "assert not {'torch', 'numpy'} & set(sys.modules), sorted({'torch', 'numpy'} & set(sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_synthetic_dataset_is_checked_and_files_on_disk_are_not():
    check_synthetic_datasets({"demo": {"source": "synthetic", "synthetic": DEMO}, "real": {"source": "lvis"}})
    with pytest.raises(ValueError, match="datasets.bad.synthetic.num_train"):
        check_synthetic_datasets({"bad": {"source": "synthetic", "synthetic": {**LVIS, "num_train": 5}}})


def test_job_settings_leave_out_only_the_default_mode():
    assert synthetic_job_settings({**DEMO, "mode": "demo"}) == DEMO  # the demo's parameters from before the key
    assert synthetic_job_settings(LVIS) == LVIS


def test_make_dataset_arguments_name_each_setting():
    assert make_dataset_arguments(LVIS) == ["--mode", "lvis", "--seed", "0", "--num-train", "400", "--num-val", "4",
                                            "--num-unlabeled", "4"]
    assert make_dataset_arguments(DEMO)[:2] == ["--mode", "demo"] and make_dataset_arguments(DEMO)[-2:] == [
        "--image-size", "128"]
