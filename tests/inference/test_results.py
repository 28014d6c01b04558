"""Detections -> LVIS results: result format, top-k, RLE masks encoded inside their boxes (full-image and
box-relative masks), rescaling to the original image, category lookups up to 1203 classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from longtail_seg.inference.results import check_mask_sizes, detections_to_lvis_results, encode_masks


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})


def pasted_output(num: int, height: int, width: int, seed: int = 0, num_classes: int = 5) -> dict:
    """A Mask R-CNN-like output: random boxes and 28x28 mask probabilities pasted with torchvision's own paste (the
    box-relative probabilities under "box_masks")."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=gen) * torch.tensor([width, height])
    wh = 2 + torch.rand(num, 2, generator=gen) * torch.tensor([width, height]) / 2
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    probabilities = torch.rand(num, 1, 28, 28, generator=gen)
    return {
        "boxes": boxes,
        "labels": torch.randint(1, num_classes + 1, (num,), generator=gen),
        "scores": torch.rand(num, generator=gen),
        "masks": paste_masks_in_image(probabilities, boxes, (height, width), padding=1),
        "box_masks": probabilities,
    }


def test_result_format_and_mask_round_trip() -> None:
    output = {
        "boxes": torch.tensor([[1.0, 2.0, 11.5, 8.25], [0.0, 0.0, 4.0, 4.0]]),
        "labels": torch.tensor([2, 1]),
        "scores": torch.tensor([0.3, 0.9]),
        "masks": torch.zeros(2, 1, 16, 20),
    }
    output["masks"][0, 0, 2:8, 1:11] = 0.7
    output["masks"][0, 0, 3, 3] = 0.49  # below threshold: a hole
    output["masks"][1, 0, 0:4, 0:4] = 0.5  # exactly the threshold counts as foreground
    results = detections_to_lvis_results(7, output, [101, 205])
    assert [r["score"] for r in results] == pytest.approx([0.9, 0.3])  # sorted by score
    first, second = results[1], results[0]
    assert set(first) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert first["image_id"] == 7 and first["category_id"] == 205 and second["category_id"] == 101
    assert first["bbox"] == [1.0, 2.0, 10.5, 6.25] and all(isinstance(v, float) for v in first["bbox"])
    assert isinstance(first["segmentation"]["counts"], str) and first["segmentation"]["size"] == [16, 20]
    expected = np.zeros((16, 20), np.uint8)
    expected[2:8, 1:11] = 1
    expected[3, 3] = 0
    np.testing.assert_array_equal(decode(first["segmentation"]), expected)
    assert decode(second["segmentation"]).sum() == 16
    json.dumps(results)  # JSON-ready


def test_bbox_is_rounded_to_two_decimals() -> None:
    output = {"boxes": torch.tensor([[1.23456, 2.0, 3.98765, 5.5]]), "labels": torch.tensor([1]),
              "scores": torch.tensor([0.5])}
    (result,) = detections_to_lvis_results(1, output, lambda label: 9)
    assert result["bbox"] == [1.23, 2.0, 2.75, 3.5]
    assert "segmentation" not in result and result["category_id"] == 9


def test_keeps_the_300_highest_scores() -> None:
    output = pasted_output(350, 32, 32, seed=1)
    output.pop("box_masks")
    results = detections_to_lvis_results(1, output, {label: 10 * label for label in range(1, 6)})
    assert len(results) == 300
    kept = sorted(r["score"] for r in results)
    assert kept == pytest.approx(sorted(output["scores"].tolist())[-300:])
    order = torch.argsort(output["scores"], descending=True)[:300]
    assert [r["category_id"] for r in results] == (10 * output["labels"][order]).tolist()
    assert len(detections_to_lvis_results(1, output, range(100, 105), max_dets=7)) == 7


def test_box_region_encoding_equals_whole_mask_encoding() -> None:
    # Mask R-CNN pastes masks inside slightly enlarged boxes; the fast path must not lose any pixel,
    # also for boxes at the image border and tiny ones.
    for height, width, seed in ((37, 53, 0), (128, 128, 1), (64, 200, 2)):
        output = pasted_output(120, height, width, seed=seed)
        output.pop("box_masks")
        fast = encode_masks(output["masks"], 0.5, output["boxes"])
        whole = encode_masks(output["masks"], 0.5)
        assert [r["counts"] for r in fast] == [r["counts"] for r in whole]
        reference = (output["masks"][:, 0] >= 0.5).numpy()
        assert all(np.array_equal(decode(r), m) for r, m in zip(fast, reference))
        assert reference.sum() > 0


def test_rescaled_boxes_and_masks_return_to_original_size() -> None:
    original = np.zeros((10, 12), np.uint8)
    original[2:7, 3:9] = 1
    upsampled = torch.from_numpy(original).repeat_interleave(2, 0).repeat_interleave(2, 1).float()  # 20x24
    output = {"boxes": torch.tensor([[6.0, 4.0, 18.0, 14.0]]), "labels": torch.tensor([1]),
              "scores": torch.tensor([0.8]), "masks": upsampled[None, None]}
    (result,) = detections_to_lvis_results(3, output, [5], scale=(0.5, 0.5))
    assert result["bbox"] == [3.0, 2.0, 6.0, 5.0]
    assert result["segmentation"]["size"] == [10, 12]
    np.testing.assert_array_equal(decode(result["segmentation"]), original)
    (explicit,) = detections_to_lvis_results(3, output, [5], scale=(0.5, 0.5), image_size=(10, 12))
    assert explicit["segmentation"] == result["segmentation"]


def test_no_detections_give_no_results() -> None:
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 8, 8)}
    assert detections_to_lvis_results(1, empty, [1]) == []
    assert detections_to_lvis_results(1, empty, [1], scale=(2.0, 2.0)) == []


def _encoded(masks: torch.Tensor, threshold: float = 0.5) -> list[str]:
    """pycocotools' RLEs of thresholded full-image masks [N, 1, H, W]."""
    stack = np.asfortranarray((masks[:, 0] >= threshold).permute(1, 2, 0).numpy().astype(np.uint8))
    return [rle["counts"].decode("ascii") for rle in mask_utils.encode(stack)]


def test_box_relative_masks_give_the_results_of_pasted_masks() -> None:
    for height, width, seed in ((37, 53, 0), (64, 200, 2)):
        output = pasted_output(120, height, width, seed=seed)
        box_relative = dict(output, masks=output.pop("box_masks"))
        categories = list(range(1000, 1005))
        pasted = detections_to_lvis_results(4, output, categories, max_dets=100)
        relative = detections_to_lvis_results(4, box_relative, categories, max_dets=100, image_size=(height, width),
                                              box_relative=True)
        assert relative == pasted and len(relative) == 100
        order = torch.argsort(output["scores"], descending=True)[:100]
        assert [r["segmentation"]["counts"] for r in relative] == _encoded(output["masks"][order])


def test_box_relative_masks_are_pasted_at_the_original_size_with_the_scaled_boxes() -> None:
    # the model saw the image at 40 x 64; the original is 25 x 40 (and 50 x 80): boxes are scaled first, then each
    # mask pasted at the original size, as torchvision's postprocess does (no full mask resized afterwards)
    output = pasted_output(60, 40, 64, seed=3)
    box_relative = dict(output, masks=output.pop("box_masks"))
    for (height, width) in ((25, 40), (50, 80)):
        scale = (width / 64, height / 40)
        results = detections_to_lvis_results(2, box_relative, [7] * 5, scale=scale, image_size=(height, width),
                                             box_relative=True)
        order = torch.argsort(output["scores"], descending=True)
        scaled = output["boxes"][order] * torch.tensor([scale[0], scale[1], scale[0], scale[1]])
        expected = paste_masks_in_image(box_relative["masks"][order], scaled, (height, width), padding=1)
        assert [r["segmentation"]["counts"] for r in results] == _encoded(expected)
        assert all(r["segmentation"]["size"] == [height, width] for r in results)
        xywh = torch.cat([scaled[:, :2], scaled[:, 2:] - scaled[:, :2]], dim=1).tolist()
        assert [r["bbox"] for r in results] == [[round(v, 2) for v in box] for box in xywh]
    with pytest.raises(ValueError, match="image_size"):
        detections_to_lvis_results(2, box_relative, [7] * 5, box_relative=True)


def test_category_lookup_at_1203_classes_and_large_coordinates() -> None:
    gen = torch.Generator().manual_seed(11)
    xs, ys = (torch.sort(torch.rand(50, 2, generator=gen) * 2400, dim=1).values for _ in range(2))
    boxes = torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=1)
    output = {"boxes": boxes, "labels": torch.randint(1, 1204, (50,), generator=gen),
              "scores": torch.rand(50, generator=gen)}
    category_ids = [3 * label + 1 for label in range(1, 1204)]  # label l -> category_ids[l - 1]
    results = detections_to_lvis_results(9, output, category_ids)
    order = torch.argsort(output["scores"], descending=True)
    assert [r["category_id"] for r in results] == [category_ids[label - 1] for label in output["labels"][order]]
    xywh = torch.cat([boxes[order, :2], boxes[order, 2:] - boxes[order, :2]], dim=1)  # float32, as the results
    assert [r["bbox"] for r in results] == [[round(v, 2) for v in box] for box in xywh.tolist()]
    assert all(isinstance(r["category_id"], int) and isinstance(r["bbox"][0], float) for r in results)
    with pytest.raises(ValueError, match="label 1204 outside 1..1203"):
        detections_to_lvis_results(9, dict(output, labels=torch.full((50,), 1204)), category_ids)


def test_mask_size_check_names_the_first_result_off_its_image_size() -> None:
    """Masks at the image's size and box-only results pass; a mask at another size or of an unknown image fails,
    naming the result's index, image and both sizes."""
    sizes = {1: (480, 640), 2: (427, 640)}
    good = [{"image_id": 1, "segmentation": {"size": [480, 640], "counts": "x"}}, {"image_id": 2, "bbox": [0, 0, 1, 1]},
            {"image_id": 2, "segmentation": {"size": [427, 640], "counts": "y"}}]
    check_mask_sizes(good, sizes, "preds.json")
    check_mask_sizes([], sizes, "preds.json")
    transposed = [*good, {"image_id": 2, "segmentation": {"size": [640, 427], "counts": "z"}}]
    off_size = r"preds.json: result 3 \(image 2\) has a mask of size \[640, 427\].*\(427, 640\)"
    with pytest.raises(ValueError, match=off_size):
        check_mask_sizes(transposed, sizes, "preds.json")
    with pytest.raises(ValueError, match=r"result 0 \(image 9\).*None"):
        check_mask_sizes([{"image_id": 9, "segmentation": {"size": [1, 1], "counts": ""}}], sizes, "preds.json")


def test_mask_scores_follow_their_detections_into_the_results() -> None:
    """A MaskIoU head's ``mask_scores`` ride along with each detection, sorted and capped by the class score."""
    output = pasted_output(20, 40, 50, seed=3)
    box_relative = dict(output, masks=output.pop("box_masks"), mask_scores=output["scores"] * 0.5)
    for given, options in ((output | {"mask_scores": box_relative["mask_scores"]}, {}),
                           (box_relative, {"image_size": (40, 50), "box_relative": True})):
        results = detections_to_lvis_results(4, given, list(range(1000, 1005)), max_dets=10, **options)
        order = torch.argsort(output["scores"], descending=True)[:10]
        assert [r["score"] for r in results] == pytest.approx(output["scores"][order].tolist())
        assert [r["mask_score"] for r in results] == pytest.approx((output["scores"][order] * 0.5).tolist())
    without = detections_to_lvis_results(4, output, list(range(1000, 1005)), max_dets=10)
    assert all("mask_score" not in r for r in without)
