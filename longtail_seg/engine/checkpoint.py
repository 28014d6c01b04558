"""Training-state checkpoints (model, optimizer, progress, RNG states) for automatic resume.

``checkpoints/last.pth`` is rewritten atomically every N iterations; a restarted job (e.g. a killed
Snakemake job run again) loads it and continues from the saved iteration. The final, inference-only
detector file is written by ``longtail_seg.models.detector.save_checkpoint`` instead.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from longtail_seg.engine.config import TrainConfig
from longtail_seg.io_utils import CorruptFileError, atomic_path, file_sha256, load_torch_file

CHECKPOINT_FORMAT = "longtail_seg.training_state.v1"


@dataclass
class TrainingProgress:
    """Where training stands: the (0-based) epoch, batches done in it, global iterations done, log rows."""

    epoch: int = 0
    batch_in_epoch: int = 0
    iteration: int = 0
    log_rows: list[dict[str, float]] = field(default_factory=list)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) generator states, to continue the same random streams."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state`` (CUDA states only when the same number of devices is visible)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def save_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: TrainingProgress,
    train_cfg: dict[str, Any] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write model/optimizer/progress/RNG states to ``path`` (a killed write leaves the old file), with
    the train config and the run's ``input_fingerprint`` that a resume must match."""
    model = model.module if hasattr(model, "module") else model
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": asdict(progress),
        "rng": capture_rng_state(),
        "train_cfg": dict(train_cfg or {}),
        "fingerprint": dict(fingerprint or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def input_fingerprint(
    settings: Mapping[str, Any] | None = None, files: Mapping[str, str | os.PathLike | None] | None = None
) -> dict[str, Any]:
    """What a run depends on besides its train config, for deciding whether a checkpoint may be resumed: settings
    (JSON-able values, e.g. the classifier or mosaic config) and input files by content (SHA-256).

    A file rewritten upstream with other contents (new data, other repeat factors) changes the fingerprint, so the
    run starts over instead of continuing a checkpoint trained on the old data; a file rewritten with the same bytes
    (an upstream step rerun for a setting that does not change it) does not.
    """
    fingerprint: dict[str, Any] = {}
    for name, value in (settings or {}).items():
        fingerprint[f"setting:{name}"] = json.dumps(value, sort_keys=True, default=str)
    for name, path in (files or {}).items():
        if path is None:
            fingerprint[f"file:{name}"] = None
        elif not os.path.isfile(path):
            fingerprint[f"file:{name}"] = [os.fspath(path), "missing"]
        else:
            fingerprint[f"file:{name}"] = [os.fspath(path), file_sha256(path)]
    return fingerprint


class CheckpointError(CorruptFileError):
    """A training-state file cannot be read (truncated, corrupt, or another kind of file); the message names it."""


def read_training_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a ``save_training_state`` file; a truncated, corrupt or foreign file raises ``CheckpointError``."""
    try:
        payload = load_torch_file(path, "training state file", "training restarts from scratch without it",
                                  map_location=map_location)
    except CorruptFileError as error:
        raise CheckpointError(str(error)) from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a training-state checkpoint; delete it to train from scratch")
    return payload


def resume_mismatch(
    payload: dict[str, Any], model: nn.Module, train_cfg: dict[str, Any], fingerprint: Mapping[str, Any] | None = None
) -> str | None:
    """Why continuing a checkpoint would not give the run ``train_cfg`` describes, or None if it would.

    Differences that make it another run: model shapes; any train setting but the run settings
    (``TrainConfig.RUN_SETTINGS``); a changed length (``epochs`` / ``max_iterations``) that the learning-rate
    schedule depends on (cosine) or that ends before the checkpoint; and, when given, the ``input_fingerprint``.
    """
    model = model.module if hasattr(model, "module") else model
    own = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    saved = {name: tuple(t.shape) for name, t in payload["model"].items()}
    if own != saved:
        differing = sorted(set(own.items()) ^ set(saved.items()))[:3]
        return f"model parameters differ (e.g. {differing})"
    old_cfg = payload.get("train_cfg", {})
    changed = sorted(
        key for key in set(old_cfg) | set(train_cfg)
        if key not in TrainConfig.RUN_SETTINGS and old_cfg.get(key) != train_cfg.get(key)
    )
    fixed_length = set(changed) & schedule_length_keys(train_cfg)
    changed = [key for key in changed if key not in LENGTH_KEYS or key in fixed_length]
    if changed:
        return "train config changed: " + ", ".join(f"{k} {old_cfg.get(k)!r} -> {train_cfg.get(k)!r}" for k in changed)
    past_end = _past_end(TrainingProgress(**payload["progress"]), train_cfg)
    if past_end:
        return past_end
    if fingerprint is not None:
        old = payload.get("fingerprint", {})
        changed = sorted(key for key in set(old) | set(fingerprint) if old.get(key) != fingerprint.get(key))
        if changed:
            return "inputs changed: " + ", ".join(changed)
    return None


LENGTH_KEYS = ("epochs", "max_iterations")


def schedule_length_keys(train_cfg: Mapping[str, Any]) -> set[str]:
    """The length keys the learning-rate schedule depends on: a cosine decays over ``max_iterations`` when set,
    else over ``epochs``; warmup, constant and epoch-step schedules do not depend on the run's length."""
    if train_cfg.get("lr_schedule", "cosine") != "cosine":
        return set()
    return {"max_iterations"} if train_cfg.get("max_iterations") else {"epochs"}


def _past_end(progress: TrainingProgress, train_cfg: Mapping[str, Any]) -> str | None:
    """Why a checkpoint lies beyond where a run of ``train_cfg`` stops (a lowered length), or None."""
    max_iterations = train_cfg.get("max_iterations")
    if max_iterations and progress.iteration > max_iterations:
        return f"the checkpoint is at iteration {progress.iteration}, past max_iterations={max_iterations}"
    epochs = train_cfg.get("epochs")
    if epochs is not None and (progress.epoch, progress.batch_in_epoch) > (epochs, 0):
        return f"the checkpoint is in epoch {progress.epoch + 1}, past epochs={epochs}"
    return None


def apply_training_state(
    payload: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True
) -> TrainingProgress:
    """Load a read checkpoint into ``model`` (and ``optimizer``, RNGs); return the saved progress."""
    model = model.module if hasattr(model, "module") else model
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if restore_rng:
        restore_rng_state(payload["rng"])
    return TrainingProgress(**payload["progress"])


def load_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> TrainingProgress:
    """Load a ``save_training_state`` file into ``model`` (and ``optimizer``); return the saved progress."""
    return apply_training_state(read_training_state(path, map_location), model, optimizer, restore_rng)
