"""Balanced group softmax: label mapping, per-group losses with and without "others" subsampling, calibrated
scores (all against hand computations with math.exp), config / registry / checkpoint, and the detector end to end."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from longtail_seg.data.lvis_io import DatasetError
from longtail_seg.models.balanced_group_softmax import BalancedGroupSoftmaxClassifier, class_groups_from_stats
from longtail_seg.models.classifiers import build_classifier
from longtail_seg.models.detector import build_detector, load_detector, save_checkpoint
from longtail_seg.stats import bgs_groups
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate

# 4 classes; group ids 1 and 3 (group 2 empty, dropped): group 1 = labels {1, 3}, group 3 = labels {2, 4}.
# Logit columns: 0-1 group 0 [bg, fg]; 2-4 group 1 [others, label 1, label 3]; 5-7 group 3 [others, label 2, label 4].
CLASS_GROUPS = [1, 3, 1, 3]
LOGITS = [
    [2.0, -1.0, 0.5, 0.1, -0.3, 1.0, 0.0, -2.0],
    [-0.5, 1.5, -1.0, 2.0, 0.3, 0.2, -0.4, 0.9],
    [0.3, 0.7, 1.2, -0.8, 0.0, -1.5, 0.6, 1.8],
    [1.0, 1.0, 0.0, 0.4, 1.6, 0.7, 0.7, -0.1],
    [-1.2, 0.4, 0.9, -0.2, -1.1, 0.3, 2.2, 0.5],
]
LABELS = [0, 1, 4, 3, 2]
# hand-derived targets inside each group (group 0: bg 0 / fg 1; other groups: 0 = others)
GROUP_TARGETS = [[0, 1, 1, 1, 1], [0, 1, 0, 2, 0], [0, 0, 2, 0, 1]]
GROUP_COLUMNS = [(0, 2), (2, 5), (5, 8)]


def _cross_entropy(row: list[float], target: int) -> float:
    return -(row[target] - math.log(sum(math.exp(v) for v in row)))


def _hand_ce(group: int, roi: int) -> float:
    start, stop = GROUP_COLUMNS[group]
    return _cross_entropy(LOGITS[roi][start:stop], GROUP_TARGETS[group][roi])


def _hand_mean(group: int, rois: list[int]) -> float:
    return sum(_hand_ce(group, r) for r in rois) / len(rois)


def _classifier(ratio: float | None) -> BalancedGroupSoftmaxClassifier:
    return BalancedGroupSoftmaxClassifier(6, 4, CLASS_GROUPS, others_sample_ratio=ratio)


def _losses(classifier: BalancedGroupSoftmaxClassifier, labels: list[int] = LABELS) -> list[float]:
    return [float(v) for v in classifier.group_losses(torch.tensor(LOGITS), torch.tensor(labels))]


def test_layout_and_group_label_mapping():
    classifier = _classifier(8.0)
    assert classifier.num_groups == 2 and classifier.group_ids == [1, 3]
    assert classifier.group_members == [[1, 3], [2, 4]]
    assert classifier.group_slices() == [(0, 2), (2, 3), (5, 3)]
    assert classifier.cls_score.out_features == 8
    assert classifier(torch.randn(5, 6)).shape == (5, 8)
    labels = torch.tensor(LABELS)
    for group, expected in enumerate(GROUP_TARGETS):
        assert classifier.group_labels[group][labels].tolist() == expected


@pytest.mark.parametrize("ratio", [None, 100.0])
def test_group_losses_without_subsampling(ratio):
    """Ratio None (off) or large (100 x 2 in-group RoIs > 3 others): every group averages over all 5 RoIs."""
    losses = _losses(_classifier(ratio))
    expected = [_hand_mean(group, [0, 1, 2, 3, 4]) for group in range(3)]
    assert losses == pytest.approx(expected, rel=1e-5)
    total = _classifier(ratio).loss(torch.tensor(LOGITS), torch.tensor(LABELS))
    assert total.ndim == 0 and float(total) == pytest.approx(sum(expected), rel=1e-5)


def test_group_losses_with_ratio_zero_use_only_in_group_rois():
    losses = _losses(_classifier(0.0))
    expected = [_hand_mean(0, [0, 1, 2, 3, 4]), _hand_mean(1, [1, 3]), _hand_mean(2, [2, 4])]
    assert losses == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("ratio, kept", [(1.0, 2), (0.5, 1)])
def test_others_subsampling_keeps_ratio_times_in_group_and_follows_torch_rng(ratio, kept):
    """Each group has 2 in-group RoIs and 3 "others": int(2 x ratio) others are drawn without replacement."""
    from itertools import combinations

    others = {1: [0, 2, 4], 2: [0, 1, 3]}
    in_group = {1: [1, 3], 2: [2, 4]}
    candidates = {
        group: {s: _hand_mean(group, in_group[group] + list(s)) for s in combinations(others[group], kept)}
        for group in (1, 2)
    }
    classifier = _classifier(ratio)
    chosen = {1: set(), 2: set()}
    for seed in range(30):
        torch.manual_seed(seed)
        losses = _losses(classifier)
        torch.manual_seed(seed)
        assert _losses(classifier) == losses  # same torch RNG state, same subsample
        assert losses[0] == pytest.approx(_hand_mean(0, [0, 1, 2, 3, 4]), rel=1e-5)  # group 0: never subsampled
        for group in (1, 2):
            matches = [s for s, value in candidates[group].items() if value == pytest.approx(losses[group], rel=1e-5)]
            assert matches, (group, losses[group], candidates[group])
            chosen[group].add(matches[0])
    assert chosen[1] == set(candidates[1]) and chosen[2] == set(candidates[2])  # every subset is reachable


def test_group_without_in_group_rois_has_zero_loss_unless_subsampling_is_off():
    labels = [0, 1, 0, 3, 0]  # nothing of group 3 (labels 2, 4)
    logits = torch.tensor(LOGITS)
    losses = _classifier(8.0).group_losses(logits, torch.tensor(labels))
    assert float(losses[2]) == 0.0
    start, stop = GROUP_COLUMNS[2]
    all_others = sum(_cross_entropy(LOGITS[r][start:stop], 0) for r in range(5)) / 5
    assert float(_classifier(None).group_losses(logits, torch.tensor(labels))[2]) == pytest.approx(all_others, rel=1e-5)


def test_loss_backpropagates_to_the_linear_layer():
    torch.manual_seed(0)
    classifier = _classifier(8.0)
    classifier.loss(classifier(torch.randn(5, 6)), torch.tensor(LABELS)).backward()
    assert classifier.cls_score.weight.grad is not None and classifier.cls_score.weight.grad.abs().sum() > 0


def test_scores_are_group_softmax_times_foreground_probability():
    probs = _classifier(8.0).scores(torch.tensor(LOGITS))
    assert probs.shape == (5, 5)
    for roi, row in enumerate(LOGITS):
        e = [math.exp(v) for v in row]
        p_bg, p_fg = e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1])
        group_1 = e[2] + e[3] + e[4]
        group_3 = e[5] + e[6] + e[7]
        expected = [p_bg, p_fg * e[3] / group_1, p_fg * e[6] / group_3, p_fg * e[4] / group_1, p_fg * e[7] / group_3]
        assert probs[roi].tolist() == pytest.approx(expected, rel=1e-5)


def test_score_rows_are_valid_for_random_logits():
    torch.manual_seed(1)
    classifier = _classifier(8.0)
    logits = 5 * torch.randn(200, 8)
    probs = classifier.scores(logits)
    bg_fg = torch.softmax(logits[:, :2], -1)
    assert torch.all(probs >= 0) and torch.all(probs <= 1)
    assert torch.allclose(probs[:, 0], bg_fg[:, 0])
    for members in classifier.group_members:  # a group's classes share at most the foreground probability
        assert torch.all(probs[:, members].sum(-1) <= bg_fg[:, 1] + 1e-6)


def test_config_registry_and_validation():
    classifier = build_classifier({"type": "bgs", "class_groups": CLASS_GROUPS, "others_sample_ratio": 4}, 6, 4)
    assert isinstance(classifier, BalancedGroupSoftmaxClassifier) and classifier.others_sample_ratio == 4.0
    assert build_classifier({"type": "bgs", "class_groups": CLASS_GROUPS}, 6, 4).others_sample_ratio == 8.0
    with pytest.raises(ValueError, match="class_groups has 3 entries"):
        build_classifier({"type": "bgs", "class_groups": [1, 2, 3]}, 6, 4)
    with pytest.raises(ValueError, match="needs class_groups"):
        build_classifier({"type": "bgs"}, 6, 4)
    with pytest.raises(ValueError, match="class_group "):
        build_classifier({"type": "bgs", "class_group ": CLASS_GROUPS}, 6, 4)
    with pytest.raises(ValueError, match=">= 1"):
        BalancedGroupSoftmaxClassifier(6, 2, [0, 1])


def test_groups_from_stats_bins():
    """Instance counts 3, 50, 5000, 7 -> bins <10 / [10,100) / >=1000: groups 1, 2, 4, 1; group 3 is dropped."""
    groups = bgs_groups([3, 50, 5000, 7]).tolist()
    classifier = BalancedGroupSoftmaxClassifier(6, 4, groups)
    assert classifier.group_ids == [1, 2, 4] and classifier.group_members == [[1, 4], [2], [3]]
    assert classifier.cls_score.out_features == 2 + 3 + 2 + 2


def test_class_groups_from_stats_reads_in_label_order(tmp_path):
    path = tmp_path / "category_stats.csv"
    table = pd.DataFrame({"category_id": [10, 20, 30], "name": ["a", "b", "c"], "bgs_group": [4, 1, 2]})
    table.to_csv(path, index=False)
    assert class_groups_from_stats(path, [30, 10, 20]) == [2, 4, 1]
    with pytest.raises(DatasetError, match=r"category_stats.csv.*category id 40"):
        class_groups_from_stats(path, [10, 40])
    with pytest.raises(DatasetError, match="not found"):
        class_groups_from_stats(tmp_path / "missing.csv", [10])


def test_detector_with_bgs_trains_evaluates_and_reloads(tmp_path):
    torch.manual_seed(0)
    model_cfg = dict(TEST_MODEL_CFG, classifier={"type": "bgs", "class_groups": [1, 2, 2], "others_sample_ratio": 8})
    model = build_detector(model_cfg, num_classes=3)
    classifier = model.roi_heads.classifiers()[0]
    assert isinstance(classifier, BalancedGroupSoftmaxClassifier)
    dataset = FakeDetectionDataset(num_images=2, size=64)
    images, targets = collate([dataset[i] for i in range(2)])
    before = classifier.cls_score.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = model.train()(images, targets)
    assert torch.isfinite(losses["loss_classifier"])
    # at init: group 0 ~ log 2, group 1 (1 class + others) ~ log 2, group 2 (2 classes + others) ~ log 3
    assert losses["loss_classifier"].item() == pytest.approx(2 * math.log(2) + math.log(3), rel=0.3)
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(before, classifier.cls_score.weight)
    with torch.no_grad():
        outputs = model.eval()(images)
    for out in outputs:
        assert len(out["scores"]) > 0 and torch.all((out["scores"] >= 0) & (out["scores"] <= 1))
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3
    path = tmp_path / "model_final.pth"
    save_checkpoint(path, model, model_cfg, [101, 102, 103])
    loaded, _ = load_detector(path)
    assert isinstance(loaded.roi_heads.classifiers()[0], BalancedGroupSoftmaxClassifier)
    with torch.no_grad():
        again = loaded(images)
    assert torch.equal(again[0]["scores"], outputs[0]["scores"])
