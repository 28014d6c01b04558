"""Detector construction, train/eval outputs, replaceable classifier, self-contained checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from longtail_seg.models.classifiers import BoxPredictor, SoftmaxClassifier, build_classifier
from longtail_seg.models.detector import (
    build_detector,
    drop_ignored,
    get_classifier,
    load_detector,
    resolve_model_cfg,
    save_checkpoint,
    set_classifier,
)
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate


def _batch(n: int = 2, size: int = 64):
    return collate([FakeDetectionDataset(num_images=n, size=size)[i] for i in range(n)])


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_builds_with_num_classes_plus_background(backbone: str) -> None:
    model = build_detector({"backbone": backbone, "fpn_channels": 32}, num_classes=7)
    predictor = model.roi_heads.box_predictor
    assert isinstance(predictor, BoxPredictor)
    assert predictor.classifier.cls_score.out_features == 8
    assert predictor.box_regressor.bbox_pred.out_features == 4 * 8
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 8
    assert model.backbone.out_channels == 32


def test_demo_model_size_matches_the_measured_prototype() -> None:
    """The demo model (defaults) has ~1.9 M parameters with 48 classes, as measured in demo_targets.md."""
    model = build_detector({}, num_classes=48)
    params = sum(p.numel() for p in model.parameters())
    assert 1.7e6 < params < 2.1e6
    assert model.roi_heads.box_roi_pool.featmap_names == ["0"]
    assert model.roi_heads.box_roi_pool.sampling_ratio == 1
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 32


def test_unknown_config_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="fpn_chanels"):
        resolve_model_cfg({"fpn_chanels": 64})
    with pytest.raises(ValueError, match="anchor_sizes"):
        build_detector({"anchor_sizes": [32, 64]}, 3)


def test_train_forward_returns_the_five_losses() -> None:
    torch.manual_seed(0)
    model = build_detector(TEST_MODEL_CFG, num_classes=3).train()
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    # at init the classifier is near uniform over C+1 = 4 classes
    assert losses["loss_classifier"].item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), rel=0.3)


def test_eval_returns_torchvision_format_without_resizing() -> None:
    torch.manual_seed(0)
    model = build_detector(TEST_MODEL_CFG, num_classes=3).eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for image, out in zip(images, outputs):
        n = len(out["boxes"])
        assert 0 < n <= 50
        assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,) and out["labels"].shape == (n,)
        assert out["masks"].shape == (n, 1, *image.shape[-2:])  # masks at the input size: no internal resize
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3
        assert torch.all(out["scores"][:-1] >= out["scores"][1:])
        assert torch.all(out["boxes"][:, 2] <= image.shape[-1]) and torch.all(out["boxes"][:, 3] <= image.shape[-2])


class _ConstantScores(nn.Module):
    """A stand-in classifier: fixed probabilities (class 2 only) and a loss that counts its calls."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, 1)
        self.num_classes = num_classes
        self.loss_calls = 0

    def forward(self, features):
        return {"raw": self.proj(features)}  # logits need not be a tensor

    def loss(self, logits, labels):
        self.loss_calls += 1
        return logits["raw"].sum() * 0 + 42.0

    def scores(self, logits):
        probs = torch.zeros(len(logits["raw"]), self.num_classes + 1)
        probs[:, 2] = 0.9
        probs[:, 0] = 0.1
        return probs


def test_classifier_is_replaceable_for_loss_and_scores() -> None:
    torch.manual_seed(0)
    model = build_detector(TEST_MODEL_CFG, num_classes=3)
    replacement = _ConstantScores(64, 3)
    set_classifier(model, replacement)
    assert get_classifier(model) is replacement
    images, targets = _batch()
    losses = model.train()(images, targets)
    assert losses["loss_classifier"].item() == 42.0 and replacement.loss_calls == 1
    with torch.no_grad():
        outputs = model.eval()(images)
    for out in outputs:
        assert len(out["labels"]) > 0
        assert torch.all(out["labels"] == 2)
        assert torch.allclose(out["scores"], torch.full_like(out["scores"], 0.9))


def test_softmax_classifier_matches_cross_entropy_and_softmax() -> None:
    torch.manual_seed(0)
    classifier = build_classifier({"type": "softmax"}, 16, 5)
    assert isinstance(classifier, SoftmaxClassifier)
    features = torch.randn(10, 16)
    labels = torch.randint(0, 6, (10,))
    logits = classifier(features)
    assert logits.shape == (10, 6)
    manual = -(logits.log_softmax(-1)[torch.arange(10), labels]).mean()
    assert torch.allclose(classifier.loss(logits, labels), manual)
    probs = classifier.scores(logits)
    assert torch.allclose(probs.sum(-1), torch.ones(10))
    assert torch.allclose(probs, F.softmax(logits, -1))
    with pytest.raises(ValueError, match="unknown model.classifier.type"):
        build_classifier({"type": "nope"}, 16, 5)


def test_checkpoint_rebuilds_the_same_model(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_detector(TEST_MODEL_CFG, num_classes=3).eval()
    path = tmp_path / "model_final.pth"
    save_checkpoint(path, model, TEST_MODEL_CFG, [11, 12, 13], epoch=2, iteration=50)
    loaded, meta = load_detector(path, map_location="cpu")
    assert meta["category_ids"] == [11, 12, 13] and meta["iteration"] == 50 and meta["epoch"] == 2
    assert not loaded.training
    images = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        expected, got = model(images)[0], loaded(images)[0]
    assert torch.equal(expected["boxes"], got["boxes"]) and torch.equal(expected["scores"], got["scores"])
    assert list(tmp_path.iterdir()) == [path]  # atomic: no temporary left behind
    with pytest.raises(ValueError, match="category ids"):
        save_checkpoint(tmp_path / "bad.pth", model, TEST_MODEL_CFG, [1, 2])


def test_predicted_class_mask_probs_equal_torchvision_inference():
    """Only the detected class's mask logits are computed; values must equal torchvision's all-class path."""
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
    from torchvision.models.detection.roi_heads import maskrcnn_inference

    from longtail_seg.models.detector import predicted_class_mask_probs

    torch.manual_seed(0)
    predictor = MaskRCNNPredictor(8, 6, 11).eval()
    features = torch.randn(7, 8, 14, 14)
    labels = [torch.tensor([3, 0, 10]), torch.tensor([], dtype=torch.int64), torch.tensor([1, 1, 5, 7])]
    with torch.no_grad():
        expected = maskrcnn_inference(predictor(features), labels)
        actual = predicted_class_mask_probs(predictor, features, labels)
    assert [a.shape for a in actual] == [e.shape for e in expected] == [(3, 1, 28, 28), (0, 1, 28, 28), (4, 1, 28, 28)]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def _ignore_target() -> dict:
    """One real object at (10, 10)-(30, 30) and one ignore region at (40, 40)-(60, 60)."""
    return {"boxes": torch.tensor([[10.0, 10, 30, 30], [40, 40, 60, 60]]), "labels": torch.tensor([2, 3]),
            "masks": torch.zeros(2, 64, 64, dtype=torch.uint8), "iscrowd": torch.tensor([False, True]),
            "image_id": 5, "mosaic_tiles": torch.zeros(2, 4, dtype=torch.int64)}


def test_drop_ignored_removes_the_region_and_the_proposals_that_would_match_it() -> None:
    proposals = torch.tensor([
        [11.0, 11, 31, 31],   # on the real object: kept
        [41.0, 41, 61, 61],   # on the ignore region (IoU 0.82): dropped
        [45.0, 45, 75, 75],   # touches the region (IoU 0.14): kept, a background
        [0.0, 0, 8, 8],       # background: kept
    ])
    kept, target = drop_ignored(proposals, _ignore_target(), iou_threshold=0.5)
    assert kept.tolist() == proposals[[0, 2, 3]].tolist()
    assert target["boxes"].tolist() == [[10.0, 10, 30, 30]] and target["labels"].tolist() == [2]
    assert target["masks"].shape == (1, 64, 64) and "iscrowd" not in target
    assert target["mosaic_tiles"].shape == (2, 4) and target["image_id"] == 5  # image-level entries untouched
    untouched, same = drop_ignored(proposals, {"boxes": proposals[:1], "labels": torch.tensor([1])}, 0.5)
    assert untouched is proposals and same["labels"].tolist() == [1]


def test_roi_sampling_never_labels_an_ignore_region_as_object_or_background() -> None:
    torch.manual_seed(0)
    model = build_detector(TEST_MODEL_CFG, num_classes=3).train()
    heads = model.roi_heads
    jitter = torch.rand(200, 4) * 6 - 3
    proposals = torch.cat([torch.tensor([[40.0, 40, 60, 60]]) + jitter[:100],   # around the ignore region
                           torch.tensor([[10.0, 10, 30, 30]]) + jitter[100:]])  # around the real object
    sampled, _, labels, _ = heads.select_training_samples([proposals], [_ignore_target()])
    region = torch.tensor([[40.0, 40, 60, 60]])
    on_region = box_iou(sampled[0], region)[:, 0] >= 0.5
    assert not on_region.any()
    assert set(labels[0].unique().tolist()) <= {0, 2} and (labels[0] == 2).any()
    # without the flag the same region is an object of class 3
    plain = {k: v for k, v in _ignore_target().items() if k != "iscrowd"}
    _, _, plain_labels, _ = heads.select_training_samples([proposals], [plain])
    assert (plain_labels[0] == 3).any()
