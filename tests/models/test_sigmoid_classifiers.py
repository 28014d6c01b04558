"""Sigmoid / focal, EQLv2 and federated classifiers: losses against hand-worked values and plain-Python references,
inference scores, EQLv2's gradient statistics, the federated class draw, edge cases and config checks."""

from __future__ import annotations

import math

import pytest
import torch

from longtail_seg.models.classifiers import build_classifier
from longtail_seg.models.eqlv2 import EQLv2Classifier
from longtail_seg.models.federated import FederatedClassifier
from longtail_seg.models.sigmoid import SigmoidClassifier


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _bce(z: float, t: float) -> float:
    p = _sigmoid(z)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


# ------------------------------------------------------------------------------------------------ sigmoid / focal


def test_sigmoid_loss_hand_worked():
    # columns [bg, 1, 2]; RoI 0 label 2, RoI 1 background; logits 0 give BCE ln 2, logit ln 3 gives p = 3/4
    logits = torch.tensor([[0.0, 0.0, math.log(3)], [math.log(3), 0.0, 0.0]])
    loss = SigmoidClassifier(4, 2).loss(logits, torch.tensor([2, 0]))
    # RoI 0: ln2 + ln2 - ln(3/4); RoI 1: -ln(3/4) + ln2 + ln2
    assert loss.item() == pytest.approx((4 * math.log(2) - 2 * math.log(0.75)) / 2, rel=1e-6)


def test_focal_loss_matches_the_plain_python_reference():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 4), [3, 0, 1]
    loss = SigmoidClassifier(4, 3, focal_gamma=2.0).loss(logits, torch.tensor(labels))
    expected = 0.0
    for row, label in zip(logits.tolist(), labels):
        for column, z in enumerate(row):
            t = 1.0 if column == label else 0.0
            p_t = _sigmoid(z) if t else 1 - _sigmoid(z)
            expected += (1 - p_t) ** 2 * _bce(z, t)
    assert loss.item() == pytest.approx(expected / 3, rel=1e-6)


def test_sigmoid_scores_scale_foreground_by_one_minus_background():
    logits = torch.tensor([[math.log(1 / 3), 0.0, math.log(3)]])  # sigmoids 1/4, 1/2, 3/4
    assert SigmoidClassifier(4, 2).scores(logits)[0].tolist() == pytest.approx([0.25, 0.375, 0.5625])


# ------------------------------------------------------------------------------------------------------- EQLv2


def _eqlv2_reference(logits, labels, pos_grad, neg_grad, first, gamma=12.0, mu=0.8, alpha=4.0):
    """Plain-Python EQLv2: (loss, new pos_grad, new neg_grad); column 0 background, weight 1."""
    num_columns = len(logits[0])
    if first:
        pos_w = neg_w = [1.0] * num_columns
    else:
        neg_w = [1.0] + [1 / (1 + math.exp(-gamma * (p / (n + 1e-10) - mu))) for p, n in zip(pos_grad, neg_grad)]
        pos_w = [1 + alpha * (1 - w) for w in neg_w]
    loss, pos_grad, neg_grad = 0.0, list(pos_grad), list(neg_grad)
    for row, label in zip(logits, labels):
        for column, z in enumerate(row):
            t = 1.0 if column == label else 0.0
            w = pos_w[column] if t else neg_w[column]
            loss += w * _bce(z, t)
            if column > 0:
                grad = abs(_sigmoid(z) - t) * w
                if t:
                    pos_grad[column - 1] += grad
                else:
                    neg_grad[column - 1] += grad
    return loss / len(labels), pos_grad, neg_grad


def test_eqlv2_weights_hand_worked():
    classifier = EQLv2Classifier(4, 2)
    classifier.pos_grad.copy_(torch.tensor([8.0, 0.0], dtype=torch.float64))
    classifier.neg_grad.copy_(torch.tensor([10.0, 5.0], dtype=torch.float64))
    classifier.num_updates.fill_(1)
    pos_w, neg_w = classifier.column_weights()
    # class 1: ratio 0.8 = mu -> neg_w 1/2, pos_w 1 + 4/2 = 3; class 2 (never a positive): ratio 0
    assert neg_w.tolist() == pytest.approx([1.0, 0.5, 1 / (1 + math.exp(9.6))])
    assert pos_w.tolist() == pytest.approx([1.0, 3.0, 1 + 4 * (1 - 1 / (1 + math.exp(9.6)))])


def test_eqlv2_first_call_is_plain_bce_then_matches_the_reference():
    torch.manual_seed(0)
    classifier = EQLv2Classifier(4, 3)
    batches = [(torch.randn(4, 4), [1, 0, 3, 1]), (torch.randn(3, 4), [2, 0, 0]), (torch.randn(2, 4), [0, 0])]
    pos_grad, neg_grad = [0.0] * 3, [0.0] * 3
    for step, (logits, labels) in enumerate(batches):
        expected, pos_grad, neg_grad = _eqlv2_reference(logits.tolist(), labels, pos_grad, neg_grad, step == 0)
        if step == 0:
            assert expected == pytest.approx(SigmoidClassifier(4, 3).loss(logits, torch.tensor(labels)).item())
        assert classifier.loss(logits, torch.tensor(labels)).item() == pytest.approx(expected, rel=1e-6)
        assert classifier.pos_grad.tolist() == pytest.approx(pos_grad, rel=1e-6)
        assert classifier.neg_grad.tolist() == pytest.approx(neg_grad, rel=1e-6)
    assert int(classifier.num_updates) == 3


def test_eqlv2_background_only_batch_collects_negatives_only():
    classifier = EQLv2Classifier(4, 2)
    loss = classifier.loss(torch.zeros(2, 3), torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(3 * math.log(2))
    assert classifier.pos_grad.tolist() == [0.0, 0.0] and classifier.neg_grad.tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------------------------------- federated


def test_federated_loss_over_present_classes_only_when_they_fill_the_set():
    # 3 classes, num_sampled_classes 2; labels 1 and 3 present -> columns 1 and 3 only (no draw)
    classifier = FederatedClassifier(4, 3, image_counts=[5, 5, 5], num_sampled_classes=2)
    logits = torch.tensor([[0.0, 7.0, math.log(3)], [math.log(3), -7.0, 0.0], [0.0, 9.0, 0.0]])
    loss = classifier.loss(logits, torch.tensor([1, 3, 0]))
    # RoI 0: ln2 (t=1) + (-ln 1/4) (t=0, p=3/4); RoI 1: -ln(1/4) + ln 2; RoI 2: ln 2 + ln 2
    assert loss.item() == pytest.approx((4 * math.log(2) + 2 * math.log(4)) / 3, rel=1e-6)


def test_federated_draw_follows_sqrt_image_counts_and_skips_unseen_classes():
    # no class present; one draw among counts [1, 4, 0]: weights 1, 2, 0 -> P(1) = 1/3, P(2) = 2/3, P(3) = 0
    classifier = FederatedClassifier(4, 3, image_counts=[1, 4, 0], num_sampled_classes=1)
    torch.manual_seed(0)
    draws = torch.stack([classifier.loss_classes(torch.tensor([0, 0])) for _ in range(3000)]).float()
    assert draws.sum(dim=1).eq(1).all()
    assert draws.mean(dim=0).tolist() == pytest.approx([1 / 3, 2 / 3, 0.0], abs=0.03)
    # asking for more classes than can be drawn: every class with images, never the unseen one
    many = FederatedClassifier(4, 3, image_counts=[1, 4, 0], num_sampled_classes=50)
    assert many.loss_classes(torch.tensor([0])).tolist() == [True, True, False]
    assert many.loss_classes(torch.tensor([3, 0])).tolist() == [True, True, True]  # present: always in


def test_federated_scores_and_empty_batch():
    classifier = FederatedClassifier(4, 2, image_counts=[3, 1])
    scores = classifier.scores(torch.tensor([[0.0, math.log(3)]]))  # sigmoids 1/2, 3/4
    assert scores[0].tolist() == pytest.approx([0.5 * 0.25, 0.5, 0.75])
    empty = classifier.loss(torch.zeros(0, 2, requires_grad=True), torch.zeros(0, dtype=torch.int64))
    assert empty.item() == 0.0


def test_federated_needs_image_counts_of_the_right_length():
    with pytest.raises(ValueError, match="needs image_counts"):
        build_classifier({"type": "federated"}, 8, 3)
    with pytest.raises(ValueError, match="image_counts has 2 entries but the model has 3 classes"):
        build_classifier({"type": "federated", "image_counts": [1, 2]}, 8, 3)


# -------------------------------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(("cfg", "cls", "attributes"), [
    ({"type": "sigmoid"}, SigmoidClassifier, {"focal_gamma": 0.0}),
    ({"type": "eqlv2"}, EQLv2Classifier, {"gamma": 12.0, "mu": 0.8, "alpha": 4.0}),
    ({"type": "federated", "image_counts": [1, 2, 3]}, FederatedClassifier,
     {"num_sampled_classes": 50, "frequency_power": 0.5}),
])
def test_defaults_from_the_registry(cfg, cls, attributes):
    classifier = build_classifier(cfg, 8, 3)
    assert type(classifier) is cls
    assert {key: getattr(classifier, key) for key in attributes} == attributes
    assert classifier.scores(classifier(torch.randn(2, 8))).shape == (2, 4)


@pytest.mark.parametrize("name", ["sigmoid", "eqlv2", "federated"])
def test_unknown_keys_are_rejected(name):
    with pytest.raises(ValueError, match=rf"classifier\.gama: unknown key\(s\) of the {name} classifier"):
        build_classifier({"type": name, "gama": 1.0, "image_counts": [1, 1, 1]} if name == "federated"
                         else {"type": name, "gama": 1.0}, 8, 3)
