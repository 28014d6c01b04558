"""Training loop: loss goes down, outputs are written, resume after SIGKILL, NaN fails clearly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from longtail_seg.engine.checkpoint import (
    CheckpointError,
    input_fingerprint,
    load_training_state,
    read_training_state,
    resume_mismatch,
)
from longtail_seg.engine.config import TrainConfig
from longtail_seg.engine.run_lock import RunDirectoryLocked
from longtail_seg.engine.train import train
from longtail_seg.models.detector import build_detector, load_detector
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, OrderedSampler, collate

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cfg(**overrides) -> dict:
    cfg = {"batch_size": 4, "epochs": 10, "lr": 3e-3, "warmup_iters": 5, "checkpoint_period": 10,
           "log_period": 4, "num_workers": 0, "progress_bar": False, "seed": 0, "lr_schedule": "constant"}
    cfg.update(overrides)
    return cfg


def test_loss_decreases_and_outputs_are_written(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dataset = FakeDetectionDataset(num_images=8, size=64)
    model = build_detector(TEST_MODEL_CFG, dataset.num_classes)
    result = train(model, dataset, OrderedSampler(8), _cfg(epochs=16), tmp_path, "cpu", collate_fn=collate)
    assert result.iteration == 16 * 2 and result.epoch == 16 and result.resumed_from_iteration == 0
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["iteration"]) == list(range(4, 33, 4))
    for column in ("lr", "loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "images_per_s"):
        assert column in metrics.columns
    first, last = metrics["loss"].iloc[:2].mean(), metrics["loss"].iloc[-2:].mean()
    assert last < 0.7 * first, (first, last)
    loaded, meta = load_detector(tmp_path / "model_final.pth")
    assert meta["category_ids"] == dataset.category_ids and meta["iteration"] == 32
    assert (tmp_path / "checkpoints" / "last.pth").exists()
    assert not [p for p in tmp_path.rglob("*.tmp*")]


def test_unknown_train_key_fails() -> None:
    with pytest.raises(ValueError, match="bach_size"):
        TrainConfig.from_dict({"bach_size": 2})
    with pytest.raises(ValueError, match="train.batch_size"):
        TrainConfig.from_dict({"batch_size": 0})


def _run_worker(out_dir: Path, max_iterations: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.engine._train_worker", str(out_dir), str(max_iterations)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_resume_after_sigkill_continues_from_checkpoint(tmp_path: Path) -> None:
    total = 40
    killed_dir = tmp_path / "killed"
    checkpoint = killed_dir / "checkpoints" / "last.pth"
    process = _run_worker(killed_dir, total)
    deadline = time.time() + 60
    while not checkpoint.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, "no checkpoint written within 60 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "model_final.pth").exists(), "run finished before the kill; raise `total`"
    saved = load_training_state(checkpoint, build_detector(TEST_MODEL_CFG, 3), restore_rng=False)
    assert 0 < saved.iteration < total

    restarted = _run_worker(killed_dir, total)
    stdout, stderr = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result == {"iteration": total, "resumed_from": saved.iteration}
    metrics = pd.read_csv(killed_dir / "metrics.csv")
    assert list(metrics["iteration"]) == list(range(2, total + 1, 2))  # no gap, no duplicate rows

    # the resumed run ends with the same weights as an uninterrupted one (same seed, same data order)
    straight_dir = tmp_path / "straight"
    straight = _run_worker(straight_dir, total)
    _, stderr = straight.communicate(timeout=120)
    assert straight.returncode == 0, stderr
    resumed_model, _ = load_detector(killed_dir / "model_final.pth")
    straight_model, _ = load_detector(straight_dir / "model_final.pth")
    for (name, a), b in zip(resumed_model.state_dict().items(), straight_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), name


class _NaNAfter(torch.nn.Module):
    """Wrap a detector: from the given call on, its box-regression loss is NaN."""

    def __init__(self, model: torch.nn.Module, bad_call: int) -> None:
        super().__init__()
        self.model = model
        self.model_cfg = model.model_cfg
        self.num_classes = model.num_classes
        self.bad_call = bad_call
        self.calls = 0

    def forward(self, images, targets):
        losses = self.model(images, targets)
        self.calls += 1
        if self.calls > self.bad_call:
            losses["loss_box_reg"] = losses["loss_box_reg"] * float("nan")
        return losses


def test_nan_loss_fails_naming_iteration_and_term(tmp_path: Path) -> None:
    dataset = FakeDetectionDataset(num_images=8, size=48)
    model = _NaNAfter(build_detector(TEST_MODEL_CFG, 3), bad_call=3)
    with pytest.raises(FloatingPointError, match=r"iteration 3 \(0-based.*loss_box_reg") as error:
        train(model, dataset, OrderedSampler(8), _cfg(batch_size=2), tmp_path, "cpu", collate_fn=collate)
    assert "loss_classifier" not in str(error.value).split("[")[0]
    assert not (tmp_path / "model_final.pth").exists()


def test_stale_checkpoint_of_another_experiment_is_not_resumed(tmp_path: Path) -> None:
    dataset = FakeDetectionDataset(num_images=4, size=48)

    def run(**overrides):
        model = build_detector(TEST_MODEL_CFG, 3)
        cfg = _cfg(**{"batch_size": 2, "epochs": 2, "checkpoint_period": 1, **overrides})
        return train(model, dataset, OrderedSampler(4), cfg, tmp_path, "cpu", collate_fn=collate)

    assert run().resumed_from_iteration == 0
    extended = run(epochs=3)  # more epochs: same experiment, continue
    assert extended.resumed_from_iteration == 4 and extended.iteration == 6
    changed = run(epochs=3, lr=1e-4)  # another learning rate: start over, keep the old file aside
    assert changed.resumed_from_iteration == 0 and changed.iteration == 6
    assert (tmp_path / "checkpoints" / "last.stale.pth").exists()
    shortened = run(epochs=2, lr=1e-4)  # a lowered length: the checkpoint is past its end, start over
    assert shortened.resumed_from_iteration == 0 and shortened.iteration == 4
    assert run(epochs=2, lr=1e-4, log_period=1, checkpoint_period=3).resumed_from_iteration == 4  # run settings


def test_lowered_or_cosine_length_changes_train_from_scratch(tmp_path: Path) -> None:
    """A checkpoint past the new max_iterations, or a cosine decaying over another length, is another run."""
    dataset = FakeDetectionDataset(num_images=4, size=48)

    def run(schedule: str, max_iterations: int):
        cfg = _cfg(batch_size=2, epochs=100, max_iterations=max_iterations, checkpoint_period=1, lr_schedule=schedule)
        return train(build_detector(TEST_MODEL_CFG, 3), dataset, OrderedSampler(4), cfg, tmp_path / schedule, "cpu",
                     collate_fn=collate)

    assert run("constant", 4).iteration == 4
    lowered = run("constant", 3)
    assert (lowered.resumed_from_iteration, lowered.iteration) == (0, 3)  # not the 4-iteration model
    assert run("constant", 5).resumed_from_iteration == 3  # a constant rate: extending continues exactly
    assert run("cosine", 3).iteration == 3
    assert run("cosine", 4).resumed_from_iteration == 0  # the cosine of 4 iterations differs from iteration 1 on


def test_truncated_checkpoint_is_set_aside_with_its_name(tmp_path: Path, caplog) -> None:
    dataset = FakeDetectionDataset(num_images=4, size=48)

    def run():
        cfg = _cfg(batch_size=2, epochs=1, checkpoint_period=1)
        return train(build_detector(TEST_MODEL_CFG, 3), dataset, OrderedSampler(4), cfg, tmp_path, "cpu",
                     collate_fn=collate)

    run()
    last = tmp_path / "checkpoints" / "last.pth"
    last.write_bytes(last.read_bytes()[:1000])  # e.g. a full disk while it was written
    with caplog.at_level("WARNING"):
        result = run()
    assert result.resumed_from_iteration == 0 and result.iteration == 2
    assert f"{last}: cannot read this training state file (1000 bytes" in caplog.text
    assert "moved to last.corrupt.pth" in caplog.text
    assert (tmp_path / "checkpoints" / "last.corrupt.pth").stat().st_size == 1000
    with pytest.raises(CheckpointError, match=f"{last.with_name('last.corrupt.pth')}: cannot read this training state"):
        read_training_state(last.with_name("last.corrupt.pth"))


def test_a_second_writer_of_a_run_directory_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from longtail_seg.engine.run_lock import run_directory_lock\n"
         "with run_directory_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        dataset = FakeDetectionDataset(num_images=4, size=48)
        start = time.perf_counter()
        with pytest.raises(RunDirectoryLocked, match=rf"pid {holder.pid} on .*run one Snakemake per results folder"):
            train(build_detector(TEST_MODEL_CFG, 3), dataset, OrderedSampler(4), _cfg(batch_size=2, epochs=1),
                  tmp_path, "cpu", collate_fn=collate)
        assert time.perf_counter() - start < 5 and not (tmp_path / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (killed, not cleaned up): the lock went with it
    assert train(build_detector(TEST_MODEL_CFG, 3), FakeDetectionDataset(num_images=4, size=48), OrderedSampler(4),
                 _cfg(batch_size=2, epochs=1), tmp_path, "cpu", collate_fn=collate).iteration == 2


def test_checkpoint_resumes_only_with_the_same_input_fingerprint(tmp_path: Path) -> None:
    dataset = FakeDetectionDataset(num_images=4, size=48)
    data_file = tmp_path / "train.json"
    data_file.write_text("{}")

    def run(epochs: int, **settings):
        model = build_detector(TEST_MODEL_CFG, 3)
        cfg = _cfg(batch_size=2, epochs=epochs, checkpoint_period=1)
        fingerprint = input_fingerprint(settings, {"train_annotations": data_file})
        return train(model, dataset, OrderedSampler(4), cfg, tmp_path / "out", "cpu", collate_fn=collate,
                     fingerprint=fingerprint)

    assert run(1, mosaic={"prob": 1.0}).resumed_from_iteration == 0
    assert run(2, mosaic={"prob": 1.0}).resumed_from_iteration == 2  # same inputs: continue
    assert run(3, mosaic={"prob": 0.5}).resumed_from_iteration == 0  # another setting: start over
    data_file.write_text('{"images": []}')  # the input rewritten upstream
    assert run(4, mosaic={"prob": 0.5}).resumed_from_iteration == 0
    assert run(5, mosaic={"prob": 0.5}).resumed_from_iteration == 8
    os.utime(data_file, ns=(0, 0))
    data_file.write_text('{"images": []}')  # rewritten with the same bytes (an upstream step rerun): continue
    assert run(6, mosaic={"prob": 0.5}).resumed_from_iteration == 10


def test_resume_mismatch_names_the_changed_inputs(tmp_path: Path) -> None:
    model = build_detector(TEST_MODEL_CFG, 3)
    payload = {"model": model.state_dict(), "train_cfg": {"lr": 0.1}, "progress": {"iteration": 4},
               "fingerprint": input_fingerprint({"mosaic": {"prob": 1.0}, "strong": None})}
    assert resume_mismatch(payload, model, {"lr": 0.1}, dict(payload["fingerprint"])) is None
    assert resume_mismatch(payload, model, {"lr": 0.1}) is None  # no fingerprint given: not checked
    changed = resume_mismatch(payload, model, {"lr": 0.1}, input_fingerprint({"mosaic": {"prob": 0.5},
                                                                               "strong": None}))
    assert changed == "inputs changed: setting:mosaic"
    missing = input_fingerprint(files={"pseudo": tmp_path / "absent.json", "none": None})
    assert missing == {"file:pseudo": [str(tmp_path / "absent.json"), "missing"], "file:none": None}
