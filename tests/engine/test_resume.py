"""A resumed run is the run it resumes: killed after any checkpoint and restarted in a fresh model (as a new process
would), stage 1 and classifier retraining end bit for bit where an uninterrupted run ends, also when the first batch
after the restart holds the smallest images (torchvision would infer its RoIAlign scales from it)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from longtail_seg.engine.retrain import retrain_classifier
from longtail_seg.engine.train import SeededSamples, train
from longtail_seg.models.detector import build_detector, load_detector
from longtail_seg.runtime import seed_everything
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate

NUM_IMAGES, BATCH, TOTAL = 8, 2, 6  # 4 batches per epoch: the run crosses an epoch boundary
# Batch 0 of every epoch is 64 px, the others 33 px: padded to 64, their stride-4 maps (16 px) over the largest
# side (33 px) round to scale 1/2, not 1/4, so a process whose first batch is one of them pooled the wrong place.
SIZES = [64, 64] + [33] * (NUM_IMAGES - 2)


class _Killed(Exception):
    """Stands in for SIGKILL: the run stops, nothing after the last checkpoint survives."""


class _RandomFlipDataset(FakeDetectionDataset):
    """The fake images with a random horizontal flip from torch's global stream (like the real transforms)."""

    def __getitem__(self, index: int):
        image, target = super().__getitem__(index)
        if torch.rand(1).item() < 0.5:
            image = image.flip(-1)
            width = image.shape[-1]
            target["boxes"] = target["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor(
                [width, 0, width, 0])
            target["masks"] = target["masks"].flip(-1)
        return image, target


class _KillAtFetch(torch.utils.data.Dataset):
    """Raise ``_Killed`` when the ``kill_at``-th (0-based) item is fetched, i.e. after the batches before it."""

    def __init__(self, dataset, kill_at: int | None) -> None:
        self.dataset, self.kill_at, self.fetched = dataset, kill_at, 0
        self.category_ids = dataset.category_ids

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if self.fetched == self.kill_at:
            raise _Killed
        self.fetched += 1
        return self.dataset[index]


def _train_cfg(**overrides) -> dict:
    cfg = {"batch_size": BATCH, "epochs": 10, "max_iterations": TOTAL, "lr": 3e-3, "warmup_iters": 2,
           "checkpoint_period": 1, "log_period": 1, "num_workers": 0, "progress_bar": False, "seed": 5,
           "lr_schedule": "cosine"}
    cfg.update(overrides)
    return cfg


def _stage1(out: Path, kill_at_iteration: int | None = None, **cfg):
    """Stage 1 in a fresh model (what a new process builds), optionally killed before iteration ``kill_at``."""
    seed_everything(0)
    model = build_detector(TEST_MODEL_CFG, 3)
    kill_at = None if kill_at_iteration is None else kill_at_iteration * BATCH
    dataset = _KillAtFetch(_RandomFlipDataset(NUM_IMAGES, sizes=SIZES), kill_at)
    return train(model, dataset, list(range(NUM_IMAGES)), _train_cfg(**cfg), out, "cpu", collate_fn=collate)


def _retrain(representation: Path, out: Path, kill_at_iteration: int | None = None, **cfg):
    kill_at = None if kill_at_iteration is None else kill_at_iteration * BATCH
    dataset = _KillAtFetch(_RandomFlipDataset(NUM_IMAGES, sizes=SIZES), kill_at)
    return retrain_classifier(representation, dataset, list(range(NUM_IMAGES)), {"type": "softmax"},
                              _train_cfg(lr=1e-2, **cfg), out, "cpu", collate_fn=collate)


@pytest.fixture(scope="module")
def representation(tmp_path_factory) -> Path:
    return _stage1(tmp_path_factory.mktemp("representation"), max_iterations=2).final_model


def _assert_same_run(resumed_dir: Path, straight_dir: Path) -> None:
    """Bit-identical final weights and identical logged losses."""
    resumed, _ = load_detector(resumed_dir / "model_final.pth")
    straight, _ = load_detector(straight_dir / "model_final.pth")
    different = [name for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values())
                 if not torch.equal(a, b)]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    columns = ["iteration", "epoch", "lr", "loss"]
    pd.testing.assert_frame_equal(pd.read_csv(resumed_dir / "metrics.csv")[columns],
                                  pd.read_csv(straight_dir / "metrics.csv")[columns])


def _kill_and_resume(run, out: Path, kill_at_iteration: int) -> int:
    with pytest.raises(_Killed):
        run(out, kill_at_iteration)
    return run(out).resumed_from_iteration


def test_stage1_resumed_after_any_checkpoint_is_the_uninterrupted_run(tmp_path: Path) -> None:
    _stage1(tmp_path / "straight")
    for kill_at in range(1, TOTAL):
        resumed_from = _kill_and_resume(_stage1, tmp_path / f"killed_{kill_at}", kill_at)
        assert resumed_from == kill_at  # checkpoint_period 1: the last checkpoint is the one before the kill
        _assert_same_run(tmp_path / f"killed_{kill_at}", tmp_path / "straight")


def test_retraining_resumed_after_any_checkpoint_is_the_uninterrupted_run(representation: Path, tmp_path: Path):
    _retrain(representation, tmp_path / "straight")
    for kill_at in (1, 3, 5):  # a small first batch mid-epoch, and right after the epoch boundary's large one
        def run(out, kill=None):
            return _retrain(representation, out, kill)
        assert _kill_and_resume(run, tmp_path / f"killed_{kill_at}", kill_at) == kill_at
        _assert_same_run(tmp_path / f"killed_{kill_at}", tmp_path / "straight")


def test_loader_workers_do_not_change_the_run(tmp_path: Path) -> None:
    """Samples are seeded by their place in the epoch: the same data with or without loader processes."""
    _stage1(tmp_path / "in_process", max_iterations=3)
    _stage1(tmp_path / "two_workers", max_iterations=3, num_workers=2)
    _assert_same_run(tmp_path / "two_workers", tmp_path / "in_process")


def test_seeded_samples_leave_the_global_stream_alone() -> None:
    samples = SeededSamples(_RandomFlipDataset(4, size=16), [3, 1, 3], key=(0, 0, 0))
    torch.manual_seed(1)
    before = torch.get_rng_state()
    first = [samples[p][0] for p in range(3)]
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a, samples[p][0]) for p, a in enumerate(first))  # the same draw for the same position
    other_epoch = SeededSamples(samples.dataset, [3, 1, 3], key=(0, 1, 0))
    flips = {bool(torch.equal(other_epoch[p][0], first[p])) for p in range(3)} | {
        bool(torch.equal(SeededSamples(samples.dataset, [3], key=(0, e, 0))[0][0], first[0])) for e in range(2, 12)}
    assert flips == {True, False}  # other epochs draw other flips
