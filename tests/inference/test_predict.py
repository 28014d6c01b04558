"""Single-scale inference: predict_dataset with a stand-in model and dataset, detections mapped back to the original
image size, and with a real (small) detector: exactly the results of torchvision's paste-then-encode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from longtail_seg.data.transforms import resize
from longtail_seg.inference.predict import predict_dataset
from longtail_seg.inference.results import write_results
from longtail_seg.models.detector import build_detector
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset
from tests.inference.test_results import decode


class StandInDetector(torch.nn.Module):
    """Eval-mode output in torchvision's format: one box per image covering its bright region."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        assert not self.training and not torch.is_grad_enabled()
        outputs = []
        for image in images:
            bright = image.mean(0) > 0.5
            ys, xs = torch.nonzero(bright, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            outputs.append({"boxes": torch.cat([box, box]), "labels": torch.tensor([1, 2]),
                            "scores": torch.tensor([0.9, 0.2]) * self.scale,
                            "masks": torch.stack([bright.float(), bright.float() * 0.4])[:, None]})
        return outputs


class StandInDataset(torch.utils.data.Dataset):
    """Images with one bright rectangle each; labels 1, 2 map to categories 11, 22."""

    def __init__(self) -> None:
        self.image_ids = [5, 6, 9]
        self.rectangles = {5: (1, 2, 6, 8), 6: (0, 0, 3, 3), 9: (4, 4, 12, 10)}

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image_id = self.image_ids[index]
        x0, y0, x1, y1 = self.rectangles[image_id]
        image = torch.zeros(3, 12, 14 + index)
        image[:, y0:y1, x0:x1] = 1.0
        return image, {"image_id": torch.tensor(image_id)}

    def category_of(self, label: int) -> int:
        return 11 * label


def test_predict_dataset_runs_the_model_over_every_image(tmp_path: Path) -> None:
    model = StandInDetector().train()
    dataset = StandInDataset()
    results = predict_dataset(model, dataset, "cpu", batch_size=2, num_workers=0)
    assert model.training  # mode restored
    assert [r["image_id"] for r in results] == [5, 5, 6, 6, 9, 9]
    assert [r["category_id"] for r in results] == [11, 22] * 3
    for image_id, result in zip([5, 6, 9], results[::2]):
        x0, y0, x1, y1 = dataset.rectangles[image_id]
        assert result["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        mask = decode(result["segmentation"])
        assert mask.sum() == (x1 - x0) * (y1 - y0) and mask[y0:y1, x0:x1].all()
    assert all(decode(r["segmentation"]).sum() == 0 for r in results[1::2])  # 0.4 < threshold
    boxes_only = predict_dataset(model, dataset, "cpu", batch_size=3, with_masks=False, max_dets=1)
    assert [r["category_id"] for r in boxes_only] == [11] * 3
    assert all("segmentation" not in r for r in boxes_only)
    write_results(tmp_path / "pred" / "val.json", results)
    assert json.loads((tmp_path / "pred" / "val.json").read_text()) == results
    assert [p.name for p in (tmp_path / "pred").iterdir()] == ["val.json"]


class HalfSizeDataset(StandInDataset):
    """The same images given to the model at half size (a test transform), with the original size in the target."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = super().__getitem__(index)
        height, width = image.shape[-2:]
        return image, {**target, "orig_size": (2 * height, 2 * width)}


def test_predict_dataset_maps_resized_detections_back_to_original_size() -> None:
    results = predict_dataset(StandInDetector(), HalfSizeDataset(), "cpu", batch_size=2, max_dets=1)
    for image_id, result in zip([5, 6, 9], results):
        x0, y0, x1, y1 = (2 * v for v in HalfSizeDataset().rectangles[image_id])
        assert result["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        mask = decode(result["segmentation"])
        assert mask.shape == (24, 2 * (14 + [5, 6, 9].index(image_id)))
        assert mask.sum() == (x1 - x0) * (y1 - y0)


def _small_detector() -> torch.nn.Module:
    torch.manual_seed(3)
    model = build_detector(TEST_MODEL_CFG, num_classes=3).eval()
    model.roi_heads.detections_per_img = 40
    return model


def _paste_reference(image_id: int, output: dict, size: tuple[int, int], category_of) -> list[dict]:
    """LVIS results the straightforward way: full-image masks thresholded, encoded by pycocotools, boxes as xywh."""
    order = torch.argsort(output["scores"], descending=True, stable=True)
    boxes, masks = output["boxes"][order], output["masks"][order]
    if masks.shape[-2:] != size:  # box-relative: paste at the original size, as torchvision's postprocess does
        masks = paste_masks_in_image(masks, boxes, size, padding=1)
    stack = np.asfortranarray((masks[:, 0] >= 0.5).permute(1, 2, 0).numpy().astype(np.uint8))
    rles = mask_utils.encode(stack) if len(boxes) else []
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    return [{"image_id": image_id, "category_id": category_of(int(label)), "bbox": [round(v, 2) for v in box],
             "score": float(score), "segmentation": {"size": list(size), "counts": rle["counts"].decode("ascii")}}
            for label, box, score, rle in zip(output["labels"][order].tolist(), xywh, output["scores"][order].tolist(),
                                              rles)]


def test_a_detector_gives_exactly_the_results_of_pasting_full_masks() -> None:
    model, dataset = _small_detector(), FakeDetectionDataset(num_images=3, size=64)
    category_of = lambda label: 1200 + label  # noqa: E731
    results = predict_dataset(model, dataset, "cpu", batch_size=3, max_dets=40, category_of=category_of)
    images, targets = zip(*(dataset[index] for index in range(len(dataset))))
    expected = []
    with torch.inference_mode():  # one batch, as predict_dataset ran it (batching changes the scores' last bits)
        for target, output in zip(targets, model(list(images))):  # torchvision's forward: masks pasted in full images
            expected += _paste_reference(target["image_id"], output, (64, 64), category_of)
    assert len(results) > 30 and results == expected
    assert sum(decode(r["segmentation"]).any() for r in results) > 10


class ResizedDataset(FakeDetectionDataset):
    """The fake images given to the model at 48 x 80 (a test transform), with their 64 x 64 size as orig_size."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = super().__getitem__(index)
        return resize(image, {}, (48, 80))[0], {"image_id": target["image_id"], "orig_size": (64, 64)}


def test_a_detector_on_resized_images_pastes_its_masks_at_the_original_size() -> None:
    model, dataset = _small_detector(), ResizedDataset(num_images=2, size=64)
    category_of = lambda label: label  # noqa: E731
    results = predict_dataset(model, dataset, "cpu", batch_size=2, max_dets=40, category_of=category_of)
    images, targets = zip(*(dataset[index] for index in range(len(dataset))))
    expected = []
    with torch.inference_mode():
        for target, output in zip(targets, model.detect(list(images))):
            boxes = output["boxes"] * torch.tensor([64 / 80, 64 / 48, 64 / 80, 64 / 48])
            expected += _paste_reference(target["image_id"], dict(output, boxes=boxes), (64, 64), category_of)
    assert len(results) > 30 and results == expected
    assert sum(decode(r["segmentation"]).any() for r in results) > 10


def test_a_mask_iou_detector_writes_each_results_mask_score_next_to_its_class_score() -> None:
    torch.manual_seed(3)
    model = build_detector(dict(TEST_MODEL_CFG, mask_iou_head=True), num_classes=3).eval()
    model.roi_heads.detections_per_img = 20
    dataset = FakeDetectionDataset(num_images=2, size=64)
    results = predict_dataset(model, dataset, "cpu", batch_size=2, max_dets=20, category_of=lambda label: label)
    images = [dataset[index][0] for index in range(len(dataset))]
    with torch.inference_mode():
        outputs = model.detect(images)
    expected = [sorted(zip(o["scores"].tolist(), o["mask_scores"].tolist()), key=lambda pair: -pair[0])
                for o in outputs]
    assert len(results) == sum(len(o["scores"]) for o in outputs) > 0
    got = [(r["score"], r["mask_score"]) for r in results]
    assert got == pytest.approx([pair for image in expected for pair in image])
