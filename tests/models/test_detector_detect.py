"""Detector.detect: the detections of forward, with the masks box-relative (forward's masks are these pasted)."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from longtail_seg.models.detector import build_detector
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset


@pytest.mark.parametrize("internal_resize", [False, True])
def test_detect_gives_forwards_detections_with_box_relative_masks(internal_resize: bool) -> None:
    torch.manual_seed(3)
    cfg = dict(TEST_MODEL_CFG, internal_resize=internal_resize, min_size=96, max_size=200)
    model = build_detector(cfg, num_classes=3).eval()
    dataset = FakeDetectionDataset(num_images=2, size=64)
    images = [dataset[0][0], dataset[1][0][:, :, :50]]
    with torch.inference_mode():
        pasted, relative = model(images), model.detect(images)
    for full, boxed, image in zip(pasted, relative, images):
        assert len(boxed["boxes"]) > 10 and boxed["masks"].shape[1:] == (1, 28, 28)
        for key in ("boxes", "labels", "scores"):  # boxes in the given image's pixels, also after a model resize
            assert torch.equal(full[key], boxed[key])
        assert torch.equal(paste_masks_in_image(boxed["masks"], boxed["boxes"], tuple(image.shape[-2:])),
                           full["masks"])


def test_detect_refuses_training_mode() -> None:
    model = build_detector(TEST_MODEL_CFG, num_classes=3).train()
    with pytest.raises(RuntimeError, match="model.eval"):
        model.detect([torch.zeros(3, 32, 32)])
