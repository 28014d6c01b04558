"""Detector construction, train/eval outputs, replaceable classifier, self-contained checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longtail_seg.io_utils import CorruptFileError
from longtail_seg.models.classifiers import SoftmaxClassifier, build_classifier
from longtail_seg.models.config import resolve_model_cfg
from longtail_seg.models.detector import build_detector, load_detector, save_checkpoint
from longtail_seg.models.roi_heads import BoxPredictor, StandardRoIHeads
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate


def _batch(n: int = 2, size: int = 64):
    return collate([FakeDetectionDataset(num_images=n, size=size)[i] for i in range(n)])


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_builds_with_num_classes_plus_background(backbone: str) -> None:
    model = build_detector({"backbone": backbone, "fpn_channels": 32}, num_classes=7)
    assert isinstance(model.roi_heads, StandardRoIHeads)
    predictor = model.roi_heads.box_predictor
    assert isinstance(predictor, BoxPredictor) and model.roi_heads.classifiers() == [predictor.classifier]
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
    assert model.roi_heads.sampler.batch_size_per_image == 32


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
    model.roi_heads.set_classifiers([replacement])
    assert model.roi_heads.classifiers() == [replacement]
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
    with pytest.raises(ValueError, match="unknown classifier 'nope'"):
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


@pytest.fixture(scope="module")
def saved_detector(tmp_path_factory) -> bytes:
    """The bytes of a real model_final.pth of the small test detector."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("detector") / "model_final.pth"
    save_checkpoint(path, build_detector(TEST_MODEL_CFG, num_classes=3), TEST_MODEL_CFG, [11, 12, 13])
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0, 10, 0.5, -20], ids=["empty", "10_bytes", "half", "all_but_20_bytes"])
def test_a_truncated_checkpoint_names_the_file_and_the_fix(tmp_path, saved_detector: bytes, keep) -> None:
    path = tmp_path / "model_final.pth"
    path.write_bytes(saved_detector[:int(len(saved_detector) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CorruptFileError) as error:
        load_detector(path)
    message = str(error.value)
    assert message.startswith(f"{path}: cannot read this detector checkpoint (")
    assert "truncated or corrupt" in message and "delete it and rerun the job that writes it" in message
    assert "retrain_classifier" in message


def test_a_file_that_is_no_detector_checkpoint_names_the_file(tmp_path, saved_detector: bytes) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file" * 8)
    assert _load_error(garbage).startswith(f"{garbage}: cannot read this detector checkpoint (128 bytes; Unpickling")
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    assert _load_error(tensor).startswith(f"{tensor} is not a detector checkpoint (it holds a Tensor, not a dict)")
    payload = torch.load(_write(tmp_path / "ok.pth", saved_detector), weights_only=False)
    payload["model"].pop(next(iter(payload["model"])))  # a weight missing
    broken = tmp_path / "broken.pth"
    torch.save(payload, broken)
    message = _load_error(broken)
    assert message.startswith(f"{broken}: its weights do not fit the model its own model_cfg builds (")
    assert "delete it and rerun the job that writes it" in message


def _load_error(path) -> str:
    with pytest.raises(CorruptFileError) as error:
        load_detector(path)
    return str(error.value)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
