"""Classifier retraining: only the classifier changes (bit for bit), classifier-only losses, resume, the loss goes
down, the retrain and combine_classifiers scripts (double classifier, refusal of different representations)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from longtail_seg.engine.config import RetrainConfig
from longtail_seg.engine.retrain import (
    checkpoint_category_ids,
    combine_classifiers,
    frozen_state,
    prepare_for_classifier_retraining,
    retrain_classifier,
)
from longtail_seg.engine.train import train
from longtail_seg.models.detector import build_detector, load_detector, save_checkpoint
from longtail_seg.models.double_classifier import DoubleClassifier
from longtail_seg.runtime import seed_everything
from tests.conftest import load_workflow_script
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, OrderedSampler, collate

STAGE1_CFG = {"batch_size": 4, "epochs": 3, "lr": 3e-3, "warmup_iters": 2, "checkpoint_period": 100,
              "log_period": 2, "num_workers": 0, "progress_bar": False, "seed": 0, "lr_schedule": "constant"}


def _retrain_cfg(**overrides) -> dict:
    cfg = dict(STAGE1_CFG, sampler="uniform", lr=1e-2, epochs=2, checkpoint_period=2)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def representation(tmp_path_factory) -> Path:
    """model_final.pth of a briefly trained stage-1 detector (trainable BatchNorm, so its statistics moved)."""
    out = tmp_path_factory.mktemp("representation")
    seed_everything(0)
    model = build_detector(TEST_MODEL_CFG, 3)
    dataset = FakeDetectionDataset(num_images=8, size=64)
    return train(model, dataset, OrderedSampler(8), STAGE1_CFG, out, "cpu", collate_fn=collate).final_model


def _retrain(checkpoint: Path, out: Path, classifier_cfg=None, **cfg):
    dataset = FakeDetectionDataset(num_images=8, size=64)
    return retrain_classifier(checkpoint, dataset, OrderedSampler(8), classifier_cfg or {"type": "softmax"},
                              _retrain_cfg(**cfg), out, "cpu", collate_fn=collate)


def _classifier(model) -> torch.nn.Module:
    """The (single-stage) box classifier of a detector."""
    return model.roi_heads.classifiers()[0]


def _classifier_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _classifier(model).state_dict().items()}


def test_prepare_freezes_all_but_a_fresh_classifier(representation: Path) -> None:
    model, _ = load_detector(representation)
    old_classifier = _classifier(model)
    double_cfg = {"type": "double", "branches": [{"type": "softmax"}, {"type": "softmax"}]}
    prepare_for_classifier_retraining(model, double_cfg)
    assert isinstance(_classifier(model), DoubleClassifier) and _classifier(model) is not old_classifier
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in _classifier(model).parameters()} and trainable
    assert model.model_cfg["classifier"] == double_cfg
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is torch.nn.BatchNorm2d and not m.training for m in norms)
    assert _classifier(model).training  # the classifier itself trains (dropout active)
    images, targets = collate([FakeDetectionDataset(num_images=2, size=64)[i] for i in range(2)])
    for target in targets:
        del target["masks"]  # retraining needs no masks
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier"}


def test_retraining_changes_only_the_classifier(representation: Path, tmp_path: Path) -> None:
    before, _ = load_detector(representation)
    seed_everything(0)
    initial = _classifier_state(prepare_for_classifier_retraining(load_detector(representation)[0], None))
    result = _retrain(representation, tmp_path, epochs=2)
    after, meta = load_detector(result.final_model)
    frozen_before, frozen_after = frozen_state(before), frozen_state(after)
    assert frozen_before.keys() == frozen_after.keys()
    assert any("running_mean" in name for name in frozen_before)
    for name, value in frozen_before.items():
        assert value.dtype == frozen_after[name].dtype and torch.equal(value, frozen_after[name]), name
    changed = _classifier_state(after)
    assert all(not torch.equal(initial[name], changed[name]) for name in initial)
    assert meta["model_cfg"]["classifier"] == {"type": "softmax"} and meta["iteration"] == 4
    columns = set(pd.read_csv(result.metrics_csv).columns)
    assert {"loss_classifier", "loss"} <= columns and not columns & {"loss_mask", "loss_objectness", "loss_box_reg"}


def test_classifier_loss_decreases(representation: Path, tmp_path: Path) -> None:
    result = _retrain(representation, tmp_path, epochs=8, log_period=2)
    loss = pd.read_csv(result.metrics_csv)["loss_classifier"]
    assert len(loss) == 8
    assert loss.iloc[-2:].mean() < 0.8 * loss.iloc[:2].mean(), list(loss)


def test_resume_continues_to_the_same_weights(representation: Path, tmp_path: Path) -> None:
    straight = _retrain(representation, tmp_path / "straight", max_iterations=6, epochs=10)
    _retrain(representation, tmp_path / "stopped", max_iterations=4, epochs=10)
    resumed = _retrain(representation, tmp_path / "stopped", max_iterations=6, epochs=10)
    assert resumed.resumed_from_iteration == 4 and resumed.iteration == 6
    want = _classifier_state(load_detector(straight.final_model)[0])
    got = _classifier_state(load_detector(resumed.final_model)[0])
    for name, value in want.items():
        assert torch.equal(value, got[name]), name


def test_retrain_config_checks_its_keys() -> None:
    assert RetrainConfig.from_dict({}).sampler == "repeat_factor"
    with pytest.raises(ValueError, match="retrain.sampler"):
        RetrainConfig.from_dict({"sampler": "balanced"})
    with pytest.raises(ValueError, match="images_per_category"):
        RetrainConfig.from_dict({"images_per_category": 0})


# ------------------------------------------------------------------------------------------- double classifier


def test_combined_model_averages_the_two_retrained_classifiers(representation: Path, tmp_path: Path) -> None:
    first = _retrain(representation, tmp_path / "a", seed=1).final_model
    second = _retrain(representation, tmp_path / "b", seed=2, lr=3e-2).final_model
    out = combine_classifiers(first, second, tmp_path / "double.pth")
    double, meta = load_detector(out)
    model_a, model_b = load_detector(first)[0], load_detector(second)[0]
    assert meta["model_cfg"]["classifier"] == {"type": "double", "branches": [{"type": "softmax"}] * 2}
    assert meta["extra"] == {**load_detector(first)[1]["extra"], "combined_from": [str(first), str(second)]}
    features = torch.randn(30, TEST_MODEL_CFG["box_head_dim"])
    classifier = _classifier(double)
    expected = (F.softmax(_classifier(model_a)(features), -1) + F.softmax(_classifier(model_b)(features), -1)) / 2
    assert torch.equal(classifier.scores(classifier(features)), expected)
    for name, value in frozen_state(model_a).items():
        assert torch.equal(value, double.state_dict()[name]), name
    images, _ = collate([FakeDetectionDataset(num_images=2, size=64)[i] for i in range(2)])
    with torch.no_grad():
        outputs = double(images)
    assert len(outputs) == 2 and {"boxes", "scores", "labels", "masks"} <= set(outputs[0])


def _combine_script():
    return load_workflow_script("combine_classifiers")


def test_combine_refuses_models_with_different_representations(representation: Path, tmp_path: Path) -> None:
    first = _retrain(representation, tmp_path / "a", max_iterations=1).final_model
    payload = torch.load(first, weights_only=False)
    name = "roi_heads.box_head.fc6.bias"
    payload["model"][name] = payload["model"][name].clone()
    payload["model"][name][0] = torch.nextafter(payload["model"][name][0], torch.tensor(1.0))  # one ulp
    torch.save(payload, tmp_path / "other.pth")
    script = _combine_script()
    args = script.parse_args(["--first", str(first), "--second", str(tmp_path / "other.pth"),
                              "--out", str(tmp_path / "double.pth")])
    with pytest.raises(SystemExit, match=name.replace(".", r"\.")):
        script.main(args)
    assert not (tmp_path / "double.pth").exists()


# ------------------------------------------------------------------------------------------------ the script


def _retrain_script():
    return load_workflow_script("retrain")


SCRIPT_CFG = {"batch_size": 2, "epochs": 2, "min_size_range": [32, 40], "max_size": 64, "num_workers": 0,
              "log_period": 1, "checkpoint_period": 2, "progress_bar": False, "warmup_iters": 1}


def _run_retrain_script(small_lvis, tmp_path: Path, classifier_cfg: dict, extra_args: tuple = (), **train_cfg) -> Path:
    annotations, image_root = small_lvis
    checkpoint = tmp_path / "rep.pth"
    if not checkpoint.exists():
        model = build_detector(TEST_MODEL_CFG, 3)
        save_checkpoint(checkpoint, model, model.model_cfg, [1, 2, 3])
    stats = tmp_path / "stats"
    if not stats.exists():  # written once: a rewritten input would (rightly) stop a later call from resuming
        stats.mkdir()
        (stats / "image_repeat_factors.csv").write_text("image_id,repeat_factor\n1,1.0\n2,2.0\n3,1.0\n")
        (stats / "category_stats.csv").write_text(
            "category_id,name,frequency,image_count,instance_count,repeat_factor,bgs_group\n"
            "1,cat1,f,2,3,1.0,1\n2,cat2,r,1,1,1.4,1\n3,cat3,r,0,0,1.0,1\n")
    out = tmp_path / "out"
    script = _retrain_script()
    script.main(script.parse_args([
        "--checkpoint", str(checkpoint), "--train-annotations", str(annotations), "--image-root", str(image_root),
        "--stats-dir", str(stats), "--classifier-cfg", json.dumps(classifier_cfg),
        "--train-cfg", json.dumps({**SCRIPT_CFG, **train_cfg}), "--out-dir", str(out), "--device", "cpu",
        "--threads", "1", *extra_args,
    ]))
    return out


def test_script_retrains_with_repeat_factors(small_lvis, tmp_path: Path) -> None:
    out = _run_retrain_script(small_lvis, tmp_path, {"type": "softmax"}, sampler="repeat_factor")
    _, meta = load_detector(out / "model_final.pth")
    assert meta["category_ids"] == [1, 2, 3] and meta["model_cfg"]["classifier"] == {"type": "softmax"}
    assert meta["extra"]["category_names"] == ["cat1", "cat2", "cat3"]  # read by predict on new images
    # 4 sampled images per epoch (factors 1 + 2 + 1) -> 2 batches of 2, over 2 epochs
    assert list(pd.read_csv(out / "metrics.csv")["iteration"]) == [1, 2, 3, 4]


def test_script_retrains_with_class_aware_sampling(small_lvis, tmp_path: Path, monkeypatch) -> None:
    """sampler: class_aware reaches the loop as k images per category per epoch: category 2 (one image, index 1) is
    drawn twice and category 1 (images 0 and 2) twice, where repeat factors or uniform sampling would differ."""
    from longtail_seg.sampling import ClassAwareSampler

    script = _retrain_script()
    seen = {}
    real = script.retrain_classifier

    def spy(checkpoint, dataset, sampler, *args, **kwargs):
        seen["sampler"] = sampler
        return real(checkpoint, dataset, sampler, *args, **kwargs)

    monkeypatch.setattr(script, "retrain_classifier", spy)
    monkeypatch.setattr("tests.engine.test_retrain._retrain_script", lambda: script)
    out = _run_retrain_script(small_lvis, tmp_path, {"type": "softmax"}, sampler="class_aware",
                              images_per_category=2, epochs=1)
    sampler = seen["sampler"]
    assert isinstance(sampler, ClassAwareSampler) and sampler.images_per_category == 2
    sampler.set_epoch(0)
    drawn = list(sampler)
    assert sorted(drawn).count(1) == 2 and sum(index in (0, 2) for index in drawn) == 2 and len(drawn) == 4
    # 4 images per epoch in batches of 2: two iterations
    assert list(pd.read_csv(out / "metrics.csv")["iteration"]) == [1, 2]


def test_script_fills_bgs_groups_from_the_stats(small_lvis, tmp_path: Path) -> None:
    out = _run_retrain_script(small_lvis, tmp_path, {"type": "bgs"}, sampler="uniform", epochs=1)
    _, meta = load_detector(out / "model_final.pth")
    assert meta["model_cfg"]["classifier"]["type"] == "bgs"
    assert len(meta["model_cfg"]["classifier"]["class_groups"]) == 3


def _pseudo_file(small_lvis) -> Path:
    """Two pseudo-labelled images (ids 101, 102, category 3) next to the fixture's images."""
    from PIL import Image

    annotations, image_root = small_lvis
    data = json.loads(annotations.read_text())
    images = []
    for image_id in (101, 102):
        Image.new("RGB", (32, 32), (200, 200, 200)).save(image_root / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 32, "width": 32})
    anns = [{"id": k, "image_id": i, "category_id": 3, "bbox": [4, 4, 12, 12], "area": 144, "score": 0.9}
            for k, i in enumerate((101, 102), start=1)]
    anns.append({"id": 3, "image_id": 101, "category_id": 1, "bbox": [18, 18, 10, 10], "area": 100, "score": 0.2,
                 "iscrowd": 1})  # an ignore region
    path = annotations.parent / "pseudo.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": data["categories"]}))
    return path


def test_script_retrains_on_mosaics_of_train_and_pseudo_images(small_lvis, tmp_path: Path, monkeypatch, capsys):
    """Mosaic + pseudo labels: the loop gets a BalancedMosaic over train + pseudo images, the RFS sampler the
    repeat factors of the union (category 3 exists only in the pseudo images), and rois_per_image reaches the
    model while model_final.pth keeps the model's own setting."""
    from longtail_seg.augment.mosaic import BalancedMosaic

    script = _retrain_script()
    seen = {}
    real = script.retrain_classifier

    def spy(checkpoint, dataset, sampler, classifier_cfg, train_cfg, out_dir, device, **kwargs):
        seen.update(dataset=dataset, sampler=sampler, cfg=train_cfg)
        return real(checkpoint, dataset, sampler, classifier_cfg, train_cfg, out_dir, device, **kwargs)

    monkeypatch.setattr(script, "retrain_classifier", spy)
    monkeypatch.setattr("tests.engine.test_retrain._retrain_script", lambda: script)
    extra = ("--mosaic-cfg", json.dumps({"output_size": 48, "scale_range": [1, 1]}),
             "--pseudo-annotations", str(_pseudo_file(small_lvis)), "--rfs-threshold", "0.9",
             "--strong-augment-cfg", json.dumps({"cutout_prob": 1.0}))
    out = _run_retrain_script(small_lvis, tmp_path, {"type": "softmax", "dropout": 0.3}, extra_args=extra,
                              sampler="repeat_factor", mosaic=True, rois_per_image=7, epochs=1)
    assert "(2 pseudo-labelled)" in capsys.readouterr().out
    mosaic = seen["dataset"]
    assert isinstance(mosaic, BalancedMosaic) and mosaic.dataset.image_ids == [1, 2, 3, 101, 102]
    image, target = mosaic[3]
    assert image.shape == (3, 48, 48) and len(target["mosaic_image_ids"]) == 4
    # t = 0.9 over 5 images: category 3 in 2 of them (f = 0.4) -> r = 1.5 for the pseudo images
    assert seen["sampler"].repeat_factors[3:].tolist() == pytest.approx([1.5, 1.5])
    assert seen["cfg"].rois_per_image == 7
    # the ignore region reaches the targets flagged, and does not count as a category-1 image for the samplers
    _, pseudo_target = mosaic.dataset[3]
    assert pseudo_target["iscrowd"].tolist() == [False, True]
    assert mosaic.dataset.image_category_ids(3) == {3}
    model, meta = load_detector(out / "model_final.pth")
    assert meta["model_cfg"]["classifier"] == {"type": "softmax", "dropout": 0.3}
    assert meta["extra"]["category_names"] == ["cat1", "cat2", "cat3"]  # through the mosaic
    assert model.roi_heads.sampler.batch_size_per_image == TEST_MODEL_CFG.get("box_batch_size_per_image", 32)


def test_script_resumes_only_with_the_same_inputs(small_lvis, tmp_path: Path) -> None:
    """A rerun with the same inputs continues the checkpoint; a rewritten pseudo-label file (Snakemake rerunning
    the pseudo_labels step) or another classifier config starts over and moves the old checkpoint aside."""
    pseudo = _pseudo_file(small_lvis)
    extra = ("--pseudo-annotations", str(pseudo), "--rfs-threshold", "0.5")
    stale = tmp_path / "out" / "checkpoints" / "last.stale.pth"
    _run_retrain_script(small_lvis, tmp_path, {"type": "softmax"}, extra_args=extra, sampler="uniform", epochs=1)
    _run_retrain_script(small_lvis, tmp_path, {"type": "softmax"}, extra_args=extra, sampler="uniform", epochs=1)
    assert not stale.exists()
    data = json.loads(pseudo.read_text())
    pseudo.write_text(json.dumps({**data, "annotations": data["annotations"][:1]}))
    _run_retrain_script(small_lvis, tmp_path, {"type": "softmax"}, extra_args=extra, sampler="uniform", epochs=1)
    assert stale.exists()
    stale.unlink()
    _run_retrain_script(small_lvis, tmp_path, {"type": "softmax", "dropout": 0.5}, extra_args=extra,
                        sampler="uniform", epochs=1)
    assert stale.exists()


def test_script_warns_when_the_pseudo_file_is_empty(small_lvis, tmp_path: Path, capsys):
    annotations, _ = small_lvis
    empty = annotations.parent / "empty_pseudo.json"
    empty.write_text(json.dumps({"images": [], "annotations": [],
                                 "categories": json.loads(annotations.read_text())["categories"]}))
    _run_retrain_script(small_lvis, tmp_path, {"type": "softmax"}, sampler="uniform", epochs=1,
                        extra_args=("--pseudo-annotations", str(empty), "--rfs-threshold", "0.5"))
    assert "has no pseudo-labelled image" in capsys.readouterr().out


def test_rois_per_image_must_be_positive():
    with pytest.raises(ValueError, match="rois_per_image"):
        RetrainConfig.from_dict({"rois_per_image": 0})


def test_a_truncated_representation_checkpoint_is_named(representation: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "model_final.pth"
    truncated.write_bytes(representation.read_bytes()[:500])
    with pytest.raises(ValueError, match=rf"{truncated}: cannot read this detector checkpoint \(500 bytes.*rerun"):
        checkpoint_category_ids(truncated)
