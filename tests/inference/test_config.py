"""The torch-free test settings: validation with the key's path, the multi-scale switch, and the settings a job
uses (what its Snakemake params hold)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from longtail_seg.inference.config import MULTI_SCALE_KEYS, TestConfig
from tests.conftest import REPO_ROOT


def test_scales_and_the_multi_scale_switch():
    assert TestConfig(min_size=100).test_scales == (100,) and not TestConfig().multi_scale
    assert TestConfig(merge="soft_nms").multi_scale and TestConfig(flip=True).multi_scale
    assert TestConfig(scales=(64,)).multi_scale and TestConfig(mask_voting=True).multi_scale
    assert not TestConfig(merge_iou=0.6).multi_scale  # a merge setting alone does not select the path


def test_test_config_rejects_inconsistent_multiscale_settings():
    with pytest.raises(ValueError, match="merge"):
        TestConfig.from_dict({"merge": "wbf"})
    with pytest.raises(ValueError, match=r"tests\.box: scale_ranges needs one \[min, max\] per scale \(2 scales"):
        TestConfig.from_dict({"scales": [64, 96], "scale_ranges": [[0, 10]]}, section="tests.box")
    with pytest.raises(ValueError, match="scales"):
        TestConfig.from_dict({"scales": []})
    with pytest.raises(ValueError, match="soft_nms_method"):
        TestConfig.from_dict({"soft_nms_method": "cubic"})
    with pytest.raises(ValueError, match=r"scale_ranges\[1\]"):
        TestConfig.from_dict({"scales": [64, 96], "scale_ranges": [[0, 10], [20, 5]]})
    with pytest.raises(ValueError, match=r"tests\.x: unknown key\(s\) \['flipp'\]; allowed: .*'flip'"):
        TestConfig.from_dict({"flipp": True}, section="tests.x")
    cfg = TestConfig.from_dict({"scales": [64, 96], "flip": True, "scale_ranges": [[0, 32], [16, 1000]]})
    assert cfg.scales == (64, 96) and cfg.scale_ranges == ((0.0, 32.0), (16.0, 1000.0))


def test_used_settings_hold_only_what_the_path_reads():
    single = TestConfig.from_dict({"min_size": 128, "merge_iou": 0.7}).used_settings()
    assert single["min_size"] == 128 and not set(MULTI_SCALE_KEYS) & set(single)
    multi = TestConfig.from_dict({"scales": [64, 96], "flip": True}).used_settings()
    assert multi["scales"] == [64, 96] and "min_size" not in multi and "soft_nms_method" not in multi
    soft = TestConfig.from_dict({"scales": [64], "merge": "soft_nms"}).used_settings()
    assert soft["soft_nms_method"] == "linear"
    # the used settings build the same config again: nothing the job needs is lost
    for cfg in (TestConfig(min_size=128), TestConfig(scales=(64, 96), flip=True, merge="soft_nms")):
        rebuilt = TestConfig.from_dict(cfg.used_settings())
        assert rebuilt.multi_scale == cfg.multi_scale and rebuilt.test_scales == cfg.test_scales
        assert rebuilt.view_size_ranges() == cfg.view_size_ranges() and rebuilt.merge == cfg.merge


def test_protocol_keys_reach_inference_only_when_they_change_it():
    for protocol in ("standard", "boundary"):  # inference is the standard one: its job params are unchanged
        cfg = TestConfig.from_dict({"protocol": protocol, "dets_per_category": 5})
        assert cfg.per_category_top_k is None and "protocol" not in cfg.used_settings()
        assert "dets_per_category" not in cfg.used_settings()
        assert cfg.evaluation_settings() == {"protocol": protocol, "dets_per_category": 5}
    for protocol in ("fixed", "challenge2021"):  # inference keeps each category's top k over the split
        cfg = TestConfig.from_dict({"protocol": protocol, "dets_per_category": 5})
        assert cfg.per_category_top_k == 5
        assert TestConfig.from_dict(cfg.used_settings()).per_category_top_k == 5
    assert TestConfig().evaluation_settings() == {"protocol": "standard", "dets_per_category": 10000}


def test_the_config_modules_do_not_import_torch():
    """The DAG imports them to check the config: no torch in the Snakemake process."""
    code = ("import sys, longtail_seg.inference.config, longtail_seg.engine.config, longtail_seg.models.config, "
            "longtail_seg.models.registry; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


NAN = float("nan")
# Every key with values that must fail, and what the message says they must be ("SECTION: KEY must be ...").
TEST_BAD: dict[str, tuple[str, list]] = {
    "min_size": ("an integer >= 1", [0, "64", 64.0, True, None]),
    "max_size": ("an integer >= 1", [-1, "120"]),
    "batch_size": ("an integer >= 1", [0, "8", 2.5]),
    "num_workers": ("an integer >= 0", [-1, "0"]),
    "max_dets": ("an integer >= 1", [0, "300", None]),
    "mask_threshold": ("a number in (0, 1]", [0, 0.0, 1.5, -0.1, "0.5", NAN, None]),
    "scales": ("a non-empty list of positive integer short sides or null", [[], [0], [64.5], "64", 64, [64, "80"]]),
    "flip": ("true or false", [1, "true", None]),
    "merge": ("one of ['nms', 'soft_nms']", ["wbf", None]),
    "merge_iou": ("a number in [0, 1]", [2, -0.5, "0.5", NAN]),
    "soft_nms_method": ("one of ['linear', 'gaussian']", ["cubic"]),
    "scale_ranges": ("a list of [min, max] pairs (one per scale) or null", [5, "[[0, 10]]"]),
    "mask_voting": ("true or false", [0, "false"]),
    "norcal_gamma": ("a number >= 0 or null", [-0.5, "0.5", NAN, True]),
    "protocol": ("one of ['standard', 'fixed', 'boundary', 'challenge2021']", ["fixd", "AP-fixed", None]),
    "dets_per_category": ("an integer >= 1", [0, "10000", 1e4, None]),
}
CASES = [(key, value, what) for key, (what, values) in TEST_BAD.items() for value in values]


def test_every_key_has_bad_values_here():
    assert set(TEST_BAD) == {f.name for f in fields(TestConfig)}


@pytest.mark.parametrize("key, value, what", CASES, ids=[f"{k}={v!r}" for k, v, _ in CASES])
def test_a_wrong_type_or_range_names_the_test_and_key(key, value, what):
    with pytest.raises(ValueError) as error:
        TestConfig.from_dict({key: value}, section="tests.single_scale")
    message = str(error.value)
    assert message.startswith(f"tests.single_scale: {key} must be {what}, got {value!r}"), message


@pytest.mark.parametrize("ranges", [[[0]], [[10, 5]], [[-1, 5]], [[0, NAN]], [["0", 5]], [5]])
def test_a_bad_scale_range_names_its_entry(ranges):
    with pytest.raises(ValueError, match=r"^tests\.box: scale_ranges\[0\] must be \[min, max\) with 0 <= min < max"):
        TestConfig.from_dict({"scales": [64], "scale_ranges": ranges}, section="tests.box")


def test_values_on_the_bounds_pass():
    cfg = TestConfig.from_dict({"min_size": 1, "num_workers": 0, "mask_threshold": 1, "merge_iou": 0.0,
                                "scales": [64, 80], "scale_ranges": [[0, float("inf")], [0, 1e5]]})
    assert cfg.scale_ranges == ((0.0, float("inf")), (0.0, 1e5)) and cfg.mask_threshold == 1
