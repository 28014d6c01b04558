"""Every shipped config builds its detector: config.yaml alone, each configs/*.yaml overlaid on it as Snakemake merges
--configfile, and the stacks the configs' headers document; each builds the ``model:`` section's detector on CPU and
runs one training step and one inference on a small image.

Five departures keep it cheap and offline: no ImageNet download (``pretrained_backbone: false``; the loading path
is torchvision's), 8 classes (the class count comes from the dataset, not the config), at most 20 detections
(masks) per image, at most 64 sampled RoIs and 100 test proposals per image (the challenge model's 1024-wide
double-head convs on 512 RoIs x 3 stages took a minute a step here), and the challenge model's SENet-154 (115M
parameters, three copies with its recursive feature pyramid: 51 s for one step here) stands in as the smallest
timm SENet of the same blocks, SE-ResNeXt-26 (``SEResNeXtBottleneck``, so its DCN and RFP code paths are the ones
SENet-154 takes); every other key of that config is built as shipped, and a separate test checks that timm knows
the shipped backbone. The challenge configs (about 50 s each here) and the two ResNet configs (lvis_v1:
ResNeXt-101, lvis_rehearsal: ResNet-50) take most of the time."""

from __future__ import annotations

import pytest
import torch
import yaml

from longtail_seg.models.detector import build_detector
from longtail_seg.workflow_config import model_job_settings
from tests.conftest import REPO_ROOT
from tests.test_workflow_config import check_config, merged

CONFIGS = sorted(path.name for path in (REPO_ROOT / "configs").glob("*.yaml"))
# Overlays the configs' headers stack on another config (``--configfile A B``).
STACKS = [("lvis_rehearsal.yaml", "lvis_rehearsal_tiny.yaml"), ("tiny.yaml", "demo_cascade.yaml"),
          ("lvis_v1.yaml", "lvis_v1_challenge.yaml")]
# Configs whose backbone the test replaces by a small one of the same family (the module docstring says why).
STAND_IN_BACKBONES = {"lvis_v1_challenge.yaml": ("timm:legacy_senet154", "timm:legacy_seresnext26_32x4d")}
CASES = [()] + [(name,) for name in CONFIGS] + STACKS
NUM_CLASSES = 8
SIZE = 64


def _config(names: tuple[str, ...]) -> dict:
    """config.yaml with the named configs merged in, in order, checked as the DAG build checks it."""
    config = merged(*(yaml.safe_load((REPO_ROOT / "configs" / name).read_text()) for name in names))
    check_config(config)
    return config


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """One 64 x 64 image with two objects."""
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
    masks[0, 8:40, 8:32] = 1
    masks[1, 30:60, 36:62] = 1
    target = {"boxes": torch.tensor([[8.0, 8.0, 32.0, 40.0], [36.0, 30.0, 62.0, 60.0]]),
              "labels": torch.tensor([1, NUM_CLASSES]), "masks": masks}
    return [image], [target]


def test_the_stacks_name_shipped_configs() -> None:
    assert {name for stack in STACKS for name in stack} <= set(CONFIGS)
    assert "demo_cascade.yaml" in CONFIGS


@pytest.mark.parametrize("names", CASES, ids=["config.yaml"] + ["+".join(case) for case in CASES[1:]])
def test_every_shipped_config_builds_trains_one_step_and_predicts(names: tuple[str, ...]) -> None:
    model_cfg = dict(model_job_settings(_config(names)), pretrained_backbone=False)
    model_cfg["box_batch_size_per_image"] = min(model_cfg["box_batch_size_per_image"], 64)
    model_cfg["rpn_post_nms_top_n_test"] = min(model_cfg["rpn_post_nms_top_n_test"], 100)
    for name in set(names) & set(STAND_IN_BACKBONES):
        shipped, stand_in = STAND_IN_BACKBONES[name]
        assert model_cfg["backbone"] == shipped
        model_cfg["backbone"] = stand_in
    torch.manual_seed(0)
    model = build_detector(model_cfg, NUM_CLASSES)
    images, targets = _batch()
    losses = model.train()(images, targets)
    assert {"loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert any(name.startswith("loss_classifier") for name in losses)
    assert any(name.startswith("loss_mask") for name in losses)  # HTC: loss_mask_stageK
    assert all(torch.isfinite(value) for value in losses.values()), losses
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sum(losses.values()).backward()
    # randomly initialised ResNeXt-101 with BatchNorm on one image: unclipped gradients (norm ~1e5) blow it up
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()
    model.roi_heads.detections_per_img = 20  # a test-time limit (inference/run.py sets it per test): fewer masks
    with torch.no_grad():
        detections = model.eval()(images)
    mask_scores = {"mask_scores"} if model_cfg["mask_iou_head"] else set()
    assert len(detections) == 1 and set(detections[0]) == {"boxes", "labels", "scores", "masks"} | mask_scores
    assert detections[0]["masks"].shape[1:] == (1, SIZE, SIZE)


def test_timm_knows_the_shipped_backbones_the_stand_ins_replace() -> None:
    import timm

    for shipped, stand_in in STAND_IN_BACKBONES.values():
        assert timm.is_model(shipped.removeprefix("timm:")) and timm.is_model(stand_in.removeprefix("timm:"))
