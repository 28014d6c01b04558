"""Seesaw classifier: the normalised linear layer, the loss against a hand-worked example and a plain-Python
reference of the authors' formula, inference scores, edge cases (no foreground RoI, a class never seen), and the
accumulated counts (buffer, checkpoint)."""

from __future__ import annotations

import math

import pytest
import torch

from longtail_seg.models.classifiers import build_classifier
from longtail_seg.models.seesaw import NormalizedLinear, SeesawClassifier


def _classifier(num_classes: int, counts: list[float] | None = None, **kwargs) -> SeesawClassifier:
    classifier = SeesawClassifier(4, num_classes, **kwargs)
    if counts is not None:
        classifier.cum_samples.copy_(torch.tensor(counts, dtype=torch.float64))
    return classifier


def _log_softmax(row: list[float], target: int) -> float:
    return row[target] - math.log(sum(math.exp(v) for v in row))


def _reference_loss(logits, labels, counts, p=0.8, q=2.0, eps=1e-2) -> float:
    """Plain-Python seesaw loss: counts are cum_samples after this batch (index 0 = background)."""
    total = 0.0
    for row, label in zip(logits, labels):
        total -= _log_softmax(row[:2], 1 if label > 0 else 0)
        if label == 0:
            continue
        classes, i = row[2:], label - 1
        exps = [math.exp(v) for v in classes]
        scores = [e / sum(exps) for e in exps]
        adjusted = []
        for j, z in enumerate(classes):
            weight = 1.0
            if j != i:
                n_i, n_j = max(counts[i + 1], 1), max(counts[j + 1], 1)
                if n_j < n_i:
                    weight *= (n_j / n_i) ** p
                ratio = scores[j] / max(scores[i], eps)
                if ratio > 1:
                    weight *= ratio ** q
            adjusted.append(z + math.log(weight))
        total -= _log_softmax(adjusted, i)
    return total / len(labels)


def test_normalized_linear_is_temperature_times_cosine_plus_bias():
    layer = NormalizedLinear(2, 2, temperature=20.0, eps=0.0)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        layer.bias.copy_(torch.tensor([0.5, 0.0]))
    out = layer(torch.tensor([[3.0, 4.0]]))
    assert out[0].tolist() == pytest.approx([20 * 0.6 + 0.5, 20 * 0.8])


def test_hand_worked_loss_mitigation_and_compensation():
    # 2 classes; RoI 0 is label 1 with class logits [0, ln 2] (scores 1/3, 2/3), RoI 1 is background.
    # After this batch N_1 = 100, N_2 = 10: M_12 = 0.1 ** 0.8; s_2 / s_1 = 2 -> C_12 = 2 ** 2 = 4.
    classifier = _classifier(2, counts=[5, 99, 10])
    logits = torch.tensor([[0.0, 0.0, 0.0, math.log(2)], [math.log(3), 0.0, 1.0, -1.0]])
    loss = classifier.loss(logits, torch.tensor([1, 0]))
    seesaw_weight = 4 * 0.1**0.8
    class_term = math.log(1 + seesaw_weight * 2)  # -log(e^0 / (e^0 + S_12 e^{ln 2}))
    objectness = math.log(2) + math.log(4 / 3)
    assert loss.item() == pytest.approx((objectness + class_term) / 2, rel=1e-6)
    assert classifier.cum_samples.tolist() == [6, 100, 10]


def test_loss_matches_the_plain_python_reference():
    torch.manual_seed(0)
    logits = torch.randn(5, 2 + 4) * 2
    labels = [2, 0, 4, 1, 2]
    classifier = _classifier(4, counts=[50, 300, 2, 40, 0])
    loss = classifier.loss(logits, torch.tensor(labels))
    counts_after = [51, 301, 4, 40, 1]
    assert classifier.cum_samples.tolist() == counts_after
    assert loss.item() == pytest.approx(_reference_loss(logits.tolist(), labels, counts_after), rel=1e-6)


def test_without_p_and_q_it_is_plain_cross_entropy():
    torch.manual_seed(1)
    logits, labels = torch.randn(4, 5), torch.tensor([1, 3, 0, 2])
    loss = _classifier(3, counts=[0, 1000, 1, 5], p=0.0, q=0.0).loss(logits, labels)
    fg = labels > 0
    expected = (torch.nn.functional.cross_entropy(logits[:, :2], fg.long(), reduction="sum")
                + torch.nn.functional.cross_entropy(logits[fg, 2:], labels[fg] - 1, reduction="sum")) / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_no_foreground_roi_gives_the_objectness_loss_only():
    logits = torch.tensor([[0.0, 0.0, 5.0, -5.0, 1.0]], requires_grad=True)
    loss = _classifier(3).loss(logits, torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert logits.grad[0, 2:].abs().sum() == 0  # class logits get no gradient from background RoIs


def test_a_class_never_seen_counts_as_one_instance():
    # label 2 never seen (count 0 -> 1): a label-1 RoI (N_1 = 9 after the batch) mitigates it by (1/9) ** p
    classifier = _classifier(2, counts=[0, 8, 0], q=0.0)
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    loss = classifier.loss(logits, torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log(2) + math.log(1 + (1 / 9) ** 0.8), rel=1e-6)


def test_scores_are_class_softmax_times_foreground_with_background_first():
    logits = torch.tensor([[0.0, math.log(3), 0.0, math.log(2)]])
    scores = _classifier(2).scores(logits)
    assert scores[0].tolist() == pytest.approx([0.25, 0.25, 0.5])
    assert scores.sum().item() == pytest.approx(1.0)


def test_config_defaults_and_unknown_keys():
    classifier = build_classifier({"type": "seesaw"}, 8, 3)
    assert (classifier.p, classifier.q, classifier.eps, classifier.cls_score.temperature) == (0.8, 2.0, 0.01, 20.0)
    assert classifier(torch.randn(2, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"classifier\.temprature: unknown key\(s\) of the seesaw classifier"):
        build_classifier({"type": "seesaw", "temprature": 10}, 8, 3)
    with pytest.raises(ValueError, match="p >= 0"):
        build_classifier({"type": "seesaw", "p": -1}, 8, 3)
