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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from longtail_seg.io_utils import atomic_path

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


# Train-config keys that may change between a killed run and its restart without invalidating the checkpoint.
RESUME_TOLERANT_KEYS = frozenset(
    {"num_workers", "progress_bar", "log_period", "checkpoint_period", "tensorboard", "epochs", "max_iterations"}
)


def input_fingerprint(
    settings: Mapping[str, Any] | None = None, files: Mapping[str, str | os.PathLike | None] | None = None
) -> dict[str, Any]:
    """What a run depends on besides its train config, for deciding whether a checkpoint may be resumed: settings
    (JSON-able values, e.g. the classifier or mosaic config) and input files by (size, modification time).

    A file rewritten upstream (Snakemake rerunning the step that makes it) changes the fingerprint, so the run
    starts over instead of continuing a checkpoint trained on the old data; a killed and restarted job sees the
    same files and resumes.
    """
    fingerprint: dict[str, Any] = {}
    for name, value in (settings or {}).items():
        fingerprint[f"setting:{name}"] = json.dumps(value, sort_keys=True, default=str)
    for name, path in (files or {}).items():
        if path is None:
            fingerprint[f"file:{name}"] = None
        elif not os.path.exists(path):
            fingerprint[f"file:{name}"] = [os.fspath(path), "missing"]
        else:
            stat = os.stat(path)
            fingerprint[f"file:{name}"] = [os.fspath(path), stat.st_size, stat.st_mtime_ns]
    return fingerprint


def read_training_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a ``save_training_state`` file (raises a clear error for any other file)."""
    payload = torch.load(Path(path), map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training-state checkpoint; delete it to train from scratch")
    return payload


def resume_mismatch(
    payload: dict[str, Any], model: nn.Module, train_cfg: dict[str, Any], fingerprint: Mapping[str, Any] | None = None
) -> str | None:
    """Why a checkpoint belongs to a different experiment (model shapes, train config or, when given, the
    ``input_fingerprint``: other settings or input files), or None if it fits."""
    model = model.module if hasattr(model, "module") else model
    own = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    saved = {name: tuple(t.shape) for name, t in payload["model"].items()}
    if own != saved:
        differing = sorted(set(own.items()) ^ set(saved.items()))[:3]
        return f"model parameters differ (e.g. {differing})"
    old_cfg = payload.get("train_cfg", {})
    changed = sorted(
        key for key in set(old_cfg) | set(train_cfg)
        if key not in RESUME_TOLERANT_KEYS and old_cfg.get(key) != train_cfg.get(key)
    )
    if changed:
        return "train config changed: " + ", ".join(f"{k} {old_cfg.get(k)!r} -> {train_cfg.get(k)!r}" for k in changed)
    if fingerprint is not None:
        old = payload.get("fingerprint", {})
        changed = sorted(key for key in set(old) | set(fingerprint) if old.get(key) != fingerprint.get(key))
        if changed:
            return "inputs changed: " + ", ".join(changed)
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
