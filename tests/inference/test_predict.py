"""Single-scale inference: predict_dataset with a stand-in model and dataset, detections mapped back to the original
image size."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from longtail_seg.inference.predict import predict_dataset
from longtail_seg.inference.results import write_results
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
