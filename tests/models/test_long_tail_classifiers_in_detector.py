"""The long-tail classifiers (seesaw, sigmoid / focal, eqlv2, federated) inside the detector: one training step in
representation learning, inference scores, the checkpoint round trip with their accumulated statistics, decoupled
retraining through the engine, and federated image counts filled from category_stats.csv."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from longtail_seg.engine.retrain import retrain_classifier
from longtail_seg.models.category_counts import counts_from_stats, fill_image_counts, needs_image_counts
from longtail_seg.models.detector import build_detector, load_detector, save_checkpoint
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, OrderedSampler, collate

CLASSIFIERS = {
    "seesaw": {"type": "seesaw"},
    "focal": {"type": "sigmoid", "focal_gamma": 2.0},
    "eqlv2": {"type": "eqlv2"},
    "federated": {"type": "federated", "image_counts": [4, 2, 1], "num_sampled_classes": 2},
}
CLASS_NAMES = {"seesaw": "SeesawClassifier", "focal": "SigmoidClassifier", "eqlv2": "EQLv2Classifier",
               "federated": "FederatedClassifier"}
RETRAIN_CFG = {"sampler": "uniform", "batch_size": 2, "epochs": 1, "max_iterations": 1, "lr": 1e-2,
               "warmup_iters": 0, "num_workers": 0, "progress_bar": False, "checkpoint_period": 1, "log_period": 1}


def _statistics(classifier) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in classifier.state_dict().items() if k in ("cum_samples", "pos_grad", "neg_grad")}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_one_training_step_inference_and_checkpoint(tmp_path, name):
    torch.manual_seed(0)
    model = build_detector(dict(TEST_MODEL_CFG, classifier=CLASSIFIERS[name]), num_classes=3)
    classifier = model.roi_heads.classifiers()[0]
    images, targets = collate([FakeDetectionDataset(num_images=2, size=64)[i] for i in range(2)])
    before = classifier.cls_score.weight.detach().clone()
    seen, loss_of = [], classifier.loss
    classifier.loss = lambda logits, labels: (seen.append(labels.clone()), loss_of(logits, labels))[1]
    losses = model.train()(images, targets)
    del classifier.loss
    assert torch.isfinite(losses["loss_classifier"]) and losses["loss_classifier"] > 0
    sum(losses.values()).backward()
    assert classifier.cls_score.weight.grad.abs().sum() > 0
    statistics = _statistics(classifier)
    if name == "seesaw":  # every sampled RoI counted once, background included
        expected = torch.bincount(seen[0], minlength=4).double()
        assert seen[0].gt(0).any() and torch.equal(statistics["cum_samples"], expected)
    if name == "eqlv2":
        assert statistics["neg_grad"].sum() > 0 and int(classifier.num_updates) == 1
    with torch.no_grad():
        outputs = model.eval()(images)
    for out in outputs:
        assert len(out["scores"]) > 0 and torch.all((out["scores"] >= 0) & (out["scores"] <= 1))
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3
    path = tmp_path / "model_final.pth"
    save_checkpoint(path, model, model.model_cfg, [101, 102, 103])
    loaded, _ = load_detector(path)
    for key, value in _statistics(loaded.roi_heads.classifiers()[0]).items():
        assert torch.equal(value, statistics[key]), key
    with torch.no_grad():
        reloaded = loaded.eval()(images)
    assert torch.allclose(reloaded[0]["scores"], outputs[0]["scores"])
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    assert not torch.equal(before, classifier.cls_score.weight)


def test_each_classifier_retrains_on_a_frozen_representation(tmp_path):
    torch.manual_seed(0)
    representation = tmp_path / "representation.pth"
    model = build_detector(TEST_MODEL_CFG, num_classes=3)
    save_checkpoint(representation, model, model.model_cfg, [101, 102, 103])
    dataset = FakeDetectionDataset(num_images=2)
    for name, cfg in CLASSIFIERS.items():
        result = retrain_classifier(representation, dataset, OrderedSampler(2), cfg, RETRAIN_CFG,
                                    tmp_path / name, "cpu", collate_fn=collate)
        retrained, meta = load_detector(result.final_model)
        assert meta["model_cfg"]["classifier"] == cfg, name
        assert type(retrained.roi_heads.classifiers()[0]).__name__ == CLASS_NAMES[name]


def test_federated_image_counts_come_from_the_statistics(tmp_path):
    csv = tmp_path / "category_stats.csv"
    pd.DataFrame({"category_id": [7, 3, 9], "image_count": [10, 0, 4], "instance_count": [12, 0, 5]}).to_csv(csv)
    assert counts_from_stats(csv, [3, 9, 7], "image_count") == [0, 4, 10]
    assert counts_from_stats(csv, [3, 9, 7], "instance_count") == [0, 5, 12]
    double = {"type": "double", "branches": [{"type": "federated"}, {"type": "seesaw"}]}
    assert needs_image_counts(double) and not needs_image_counts({"type": "seesaw"})
    filled = fill_image_counts(double, csv, [7, 3, 9])
    assert filled["branches"] == [{"type": "federated", "image_counts": [10, 0, 4]}, {"type": "seesaw"}]
    assert double["branches"][0] == {"type": "federated"}  # the input is left as it was
    assert not needs_image_counts(filled)
    with pytest.raises(ValueError, match="needs category_stats.csv"):
        fill_image_counts({"type": "federated"}, None, [7])
    with pytest.raises(Exception, match="category id 5 of the model has no image_count"):
        counts_from_stats(csv, [5], "image_count")
