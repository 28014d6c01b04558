"""The ``model:`` config section: every key of the wrong type or out of range fails naming its path, before a
detector is built (torch-free, so the workflow runs the same checks when it builds the DAG)."""

from __future__ import annotations

import pytest

from longtail_seg.models.config import DEFAULT_MODEL_CFG, resolve_model_cfg

NAN = float("nan")
# Every key with values that must fail, and the start of what the message says they must be.
MODEL_BAD: dict[str, tuple[str, list]] = {
    "backbone": ("backbone: unknown backbone", ["resnet", None, "timm:", "timm:senet 154", "timm"]),
    "pretrained_backbone": ("pretrained_backbone must be true or false", [1, "false"]),
    "backbone_weights": ("backbone_weights must be a file path or null", ["", 3, True]),
    "dcn": ("dcn", [[3, 4, 5], {"stages": [1]}, {"stages": [5]}, {"stages": [3, 3]}, {"modulated": 1},
                    {"stage": [3]}]),  # the tiny backbone's stages are 2-4
    "rfp": ("rfp", [2, {"steps": 0}, {"steps": 2.0}, {"aspp_channels": 0}, {"aspp_dilations": []},
                    {"aspp_dilations": [0]}, {"step": 2}]),
    "trainable_backbone_layers": ("trainable_backbone_layers must be an integer in [0, 5] or null", [6, -1, "3"]),
    "norm": ("norm must be one of ['bn', 'frozen_bn', None]", ["gn"]),
    "tiny_stem_channels": ("tiny_stem_channels must be an integer >= 1", [0, "24", 24.0]),
    "tiny_stage_channels": ("tiny_stage_channels must be a non-empty list of integers >= 1",
                            [[], [48, 0], [48, "96"], 48]),
    "fpn_channels": ("fpn_channels must be an integer >= 1", [0, "64"]),
    "anchor_sizes": ("anchor_sizes must be a non-empty list of numbers > 0 or null", [[], [16, 32, 0, 128], "16"]),
    "anchor_aspect_ratios": ("anchor_aspect_ratios must be a non-empty list of numbers > 0",
                             [[], [0.5, -1.0], [NAN], 1.0]),
    "rpn_pre_nms_top_n_train": ("rpn_pre_nms_top_n_train must be an integer >= 1", [0, "600"]),
    "rpn_post_nms_top_n_train": ("rpn_post_nms_top_n_train must be an integer >= 1", [0, 300.0]),
    "rpn_pre_nms_top_n_test": ("rpn_pre_nms_top_n_test must be an integer >= 1", [-1]),
    "rpn_post_nms_top_n_test": ("rpn_post_nms_top_n_test must be an integer >= 1", [None]),
    "rpn_nms_thresh": ("rpn_nms_thresh must be a number in [0, 1]", [1.5, "0.7", NAN]),
    "rpn_batch_size_per_image": ("rpn_batch_size_per_image must be an integer >= 1", [0, True]),
    "roi_heads": ("roi_heads: unknown RoI heads", ["cascde", "hct"]),
    "box_head": ("box_head must be one of", ["conv", None]),
    "double_head": ("double_head", [4, {"conv_blocks": -1}, {"conv_channels": 6}, {"conv_channels": 0},
                                    {"blocks": 4}]),
    "mask_iou_head": ("mask_iou_head must be true or false", [1, "true"]),
    "cascade": ("cascade", [None, [0.5], {"iou_threshold": [0.5]}, {"iou_thresholds": [0.5, 1.5, 0.7]}]),
    "box_batch_size_per_image": ("box_batch_size_per_image must be an integer >= 1", [0, "32"]),
    "box_positive_fraction": ("box_positive_fraction must be a number in [0, 1]", [-0.1, 2]),
    "box_head_dim": ("box_head_dim must be an integer >= 1", [0]),
    "roi_feature_levels": ("roi_feature_levels must be a non-empty list of FPN level names", [[], [0], "0"]),
    "roi_sampling_ratio": ("roi_sampling_ratio must be an integer >= 0", [-1, 1.5]),
    "mask_head_channels": ("mask_head_channels must be an integer >= 1", [0]),
    "mask_head_layers": ("mask_head_layers must be an integer >= 1", [0, "2"]),
    "classifier": ("classifier", [{"type": "nope"}]),
    "internal_resize": ("internal_resize must be true or false", ["no", 0]),
    "min_size": ("min_size must be an integer >= 1", [0, "800"]),
    "max_size": ("max_size must be an integer >= 1", [0]),
    "image_mean": ("image_mean must be 3 numbers", [[0.5, 0.5], [0.5, "0.5", 0.5], 0.5]),
    "image_std": ("image_std must be 3 numbers > 0", [[0.2, 0.0, 0.2], [0.2, 0.2]]),
    "box_detections_per_img": ("box_detections_per_img must be an integer >= 1", [0, "300"]),
    "box_score_thresh": ("box_score_thresh must be a number in [0, 1]", [-0.1, 1.5, NAN]),
    "box_nms_thresh": ("box_nms_thresh must be a number in [0, 1]", [1.5, "0.5"]),
}
CASES = [(key, value, what) for key, (what, values) in MODEL_BAD.items() for value in values]


def test_every_key_has_bad_values_here():
    assert set(MODEL_BAD) == set(DEFAULT_MODEL_CFG)


@pytest.mark.parametrize("key, value, what", CASES, ids=[f"{k}={v!r}" for k, v, _ in CASES])
def test_a_wrong_type_or_range_names_the_section_and_key(key, value, what):
    with pytest.raises(ValueError) as error:
        resolve_model_cfg({key: value}, section="model")
    assert str(error.value).startswith(f"model.{what}"), str(error.value)


def test_values_on_the_bounds_pass():
    cfg = resolve_model_cfg({"trainable_backbone_layers": 0, "roi_sampling_ratio": 0, "box_score_thresh": 0,
                             "box_nms_thresh": 1, "anchor_sizes": (8, 16, 32.5, 64), "tiny_stage_channels": (8, 8, 8)})
    assert cfg["anchor_sizes"] == (8, 16, 32.5, 64)


# --- deformable convs, the recursive feature pyramid, timm backbones and local weights ------------------------------

NESTED_BAD = [
    ({"dcn": [3, 4, 5]}, "model.dcn must be a mapping with keys ['modulated', 'stages'], got [3, 4, 5]"),
    ({"dcn": {"stage": [3]}}, "model.dcn: unknown key(s) ['stage']; allowed: ['modulated', 'stages']"),
    ({"dcn": {"stages": [1]}}, "model.dcn.stages must be a list of distinct stages in [2, 4] (2 = stride 4; backbone "
                               "'tiny' has 3 stages), got [1]"),
    ({"backbone": "resnet50", "dcn": {"stages": [3, 6]}}, "model.dcn.stages must be a list of distinct stages in "
                                                          "[2, 5]"),
    ({"dcn": {"stages": [3, 3]}}, "model.dcn.stages must be a list of distinct stages"),
    ({"dcn": {"stages": "3"}}, "model.dcn.stages must be a list"),
    ({"dcn": {"modulated": "yes"}}, "model.dcn.modulated must be true or false, got 'yes'"),
    ({"rfp": {"steps": 0}}, "model.rfp.steps must be an integer >= 1, got 0"),
    ({"rfp": {"aspp_channels": 0}}, "model.rfp.aspp_channels must be an integer >= 1, got 0"),
    ({"rfp": {"aspp_dilations": [1, 0]}}, "model.rfp.aspp_dilations must be a non-empty list of integers >= 1"),
    ({"backbone_weights": "x.pth", "pretrained_backbone": True}, "model.backbone_weights and "
                                                                 "model.pretrained_backbone: true both load"),
    ({"backbone": "timm:"}, "model.backbone: unknown backbone 'timm:'; choose one of"),
]


@pytest.mark.parametrize("override, message", NESTED_BAD, ids=[m.split(" ")[0] for _, m in NESTED_BAD])
def test_backbone_options_fail_naming_their_key(override, message):
    with pytest.raises(ValueError) as error:
        resolve_model_cfg(override, section="model")
    assert str(error.value).startswith(message), str(error.value)


def test_nested_options_merge_with_their_defaults():
    cfg = resolve_model_cfg({"backbone": "resnet50", "dcn": {"stages": [3, 4, 5]}, "rfp": {"steps": 3}})
    assert cfg["dcn"] == {"stages": [3, 4, 5], "modulated": False}
    assert cfg["rfp"] == {"steps": 3, "aspp_channels": 64, "aspp_dilations": [1, 3, 6]}
    assert DEFAULT_MODEL_CFG["dcn"] == {"stages": [], "modulated": False}  # the defaults are not changed
    cfg = resolve_model_cfg({"backbone": "timm:legacy_senet154", "backbone_weights": "w.pth",
                             "dcn": {"stages": [2, 5], "modulated": True}})
    assert cfg["backbone"] == "timm:legacy_senet154" and cfg["anchor_sizes"] == [32, 64, 128, 256, 512]
    assert resolve_model_cfg({"tiny_stage_channels": [8, 8, 8, 8], "dcn": {"stages": [5]}})["dcn"]["stages"] == [5]
