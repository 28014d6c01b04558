"""Representation-learning training loop: seeded, DDP-aware, bf16 on CUDA, checkpointed and auto-resuming.

``train(model, dataset, sampler, cfg, out_dir, device)`` writes
  out_dir/checkpoints/last.pth   training state every ``checkpoint_period`` iterations (atomic);
                                 a restarted run continues from it automatically
  out_dir/metrics.csv            losses, lr and throughput every ``log_period`` iterations (atomic)
  out_dir/model_final.pth        the detector for inference (``models.detector.load_detector``)
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from longtail_seg.engine.checkpoint import (
    CheckpointError,
    TrainingProgress,
    apply_training_state,
    read_training_state,
    resume_mismatch,
    save_training_state,
)
from longtail_seg.engine.config import TrainConfig
from longtail_seg.engine.run_lock import run_directory_lock
from longtail_seg.engine.schedule import LRSchedule, build_optimizer
from longtail_seg.io_utils import atomic_write_text
from longtail_seg.runtime import distributed_rank_and_size, resolve_device, seed_everything

LOGGER = logging.getLogger(__name__)
LAST_CHECKPOINT = Path("checkpoints") / "last.pth"
FINAL_MODEL = "model_final.pth"
METRICS_CSV = "metrics.csv"


@dataclass
class TrainResult:
    """What a finished ``train`` call did."""

    iteration: int
    epoch: int
    resumed_from_iteration: int
    final_model: Path
    metrics_csv: Path


# --------------------------------------------------------------------------------------------------- training


def train(
    model: nn.Module,
    dataset: Dataset,
    sampler: Any,
    cfg: dict[str, Any] | TrainConfig,
    out_dir: str | os.PathLike,
    device: str | torch.device = "auto",
    model_cfg: dict[str, Any] | None = None,
    category_ids: Sequence[int] | None = None,
    collate_fn: Callable | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset`` in the order of ``sampler`` (an epoch-seeded sampler with set_epoch).

    Resumes automatically from out_dir/checkpoints/last.pth when it exists and matches this run: the same model
    shapes, train config and ``fingerprint`` (``checkpoint.input_fingerprint`` of the inputs and settings the
    caller trains from; None skips that check). ``model_cfg`` and
    ``category_ids`` go into model_final.pth so inference rebuilds the model from the file alone
    (defaults: ``model.model_cfg`` and ``dataset.category_ids``).
    """
    cfg = TrainConfig.from_dict(cfg)
    out_dir = Path(out_dir)
    device = resolve_device(device)
    rank, world_size = distributed_rank_and_size()
    seed_everything(cfg.seed + rank)
    model.to(device)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    schedule = LRSchedule.from_config(
        cfg.lr_schedule, base_lr=cfg.lr, epochs=cfg.epochs, max_iterations=cfg.max_iterations,
        warmup_iters=cfg.warmup_iters, warmup_factor=cfg.warmup_factor, min_lr=cfg.min_lr,
    )
    final_path = out_dir / FINAL_MODEL
    with run_directory_lock(out_dir) if rank == 0 else contextlib.nullcontext():  # one writer per run directory
        progress = _resume_if_possible(out_dir / LAST_CHECKPOINT, model, optimizer, device, rank, cfg, fingerprint)
        resumed_from = progress.iteration
        train_model = _wrap_ddp(model, device, cfg) if world_size > 1 else model
        loop = _TrainLoop(train_model, optimizer, schedule, cfg, out_dir, device, rank, fingerprint)
        loop.run(dataset, sampler, progress, collate_fn or _default_collate())
        if rank == 0:
            _save_final(model, final_path, model_cfg, category_ids, dataset, progress)
        if world_size > 1:
            dist.barrier()
    return TrainResult(progress.iteration, progress.epoch, resumed_from, final_path, out_dir / METRICS_CSV)


def _default_collate() -> Callable:
    """The detection collate of the data package (lists of images and targets)."""
    from longtail_seg.data.dataset import collate_detection

    return collate_detection


def _resume_if_possible(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, rank: int,
    cfg: TrainConfig, fingerprint: Mapping[str, Any] | None = None,
) -> TrainingProgress:
    """Load last.pth when present and from this experiment (every rank), else start at iteration 0.

    A checkpoint left by a different experiment (other model shapes, train settings or inputs, e.g. Snakemake
    rerunning after a config change) is moved aside to last.stale.pth and training starts over.
    """
    if not path.exists():
        return TrainingProgress()
    try:
        payload = read_training_state(path, map_location=device)
    except CheckpointError as error:
        _set_aside(path, "last.corrupt.pth", str(error), rank)
        return TrainingProgress()
    mismatch = resume_mismatch(payload, model, asdict(cfg), fingerprint)
    if mismatch is not None:
        _set_aside(path, "last.stale.pth", f"not resuming from {path}: {mismatch}", rank)
        return TrainingProgress()
    progress = apply_training_state(payload, model, optimizer, restore_rng=rank == 0)
    if rank != 0:
        seed_everything(cfg.seed + rank + progress.iteration)
    if rank == 0:
        LOGGER.info("resuming from %s at iteration %d (epoch %d)", path, progress.iteration, progress.epoch)
    return progress


def _set_aside(path: Path, new_name: str, reason: str, rank: int) -> None:
    """Move a checkpoint that cannot be resumed to ``new_name`` (kept for inspection), once every rank read it."""
    _, world_size = distributed_rank_and_size()
    if world_size > 1:
        dist.barrier()  # every rank has read the file before rank 0 moves it
    if rank == 0:
        LOGGER.warning("%s; moved to %s, training from scratch", reason, new_name)
        os.replace(path, path.with_name(new_name))


def _wrap_ddp(model: nn.Module, device: torch.device, cfg: TrainConfig) -> nn.Module:
    """DistributedDataParallel around the model (one device per process)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=cfg.find_unused_parameters
    )


def _save_final(
    model: nn.Module,
    path: Path,
    model_cfg: dict[str, Any] | None,
    category_ids: Sequence[int] | None,
    dataset: Dataset,
    progress: TrainingProgress,
) -> None:
    """Write model_final.pth (detector weights + config + category ids) atomically."""
    from longtail_seg.models.detector import save_checkpoint

    model_cfg = model_cfg if model_cfg is not None else getattr(model, "model_cfg", None)
    if model_cfg is None:
        raise ValueError("train() needs model_cfg (or a model built by build_detector) to write model_final.pth")
    if category_ids is None:
        category_ids = getattr(dataset, "category_ids", None) or list(range(1, model.num_classes + 1))
    # class names for predict on new images (inference/new_images.py); a mosaic wraps its dataset
    names = getattr(dataset, "category_names", None) or getattr(getattr(dataset, "dataset", None),
                                                                "category_names", None)
    extra = {"category_names": list(names)} if names is not None and len(names) == len(category_ids) else None
    save_checkpoint(path, model, model_cfg, list(category_ids), epoch=progress.epoch, iteration=progress.iteration,
                    extra=extra)


class _TrainLoop:
    """One training run's mutable machinery: steps, logging, checkpoints."""

    def __init__(
        self, model, optimizer, schedule, cfg: TrainConfig, out_dir: Path, device, rank: int,
        fingerprint: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.fingerprint = fingerprint
        self.optimizer = optimizer
        self.schedule = schedule
        self.cfg = cfg
        self.out_dir = out_dir
        self.device = device
        self.rank = rank
        self.autocast = device.type == "cuda" and cfg.amp
        self.window: dict[str, list[float]] = defaultdict(list)
        self.window_start = time.perf_counter()
        self.window_images = 0
        self.tensorboard = _open_tensorboard(out_dir) if cfg.tensorboard and rank == 0 else None

    def run(self, dataset: Dataset, sampler: Any, progress: TrainingProgress, collate_fn: Callable) -> None:
        """Epoch loop from ``progress`` until ``epochs`` or ``max_iterations``; checkpoints at the end too."""
        self.model.train()
        bar = tqdm(total=self._estimated_total(sampler), initial=progress.iteration, desc="train",
                   disable=self.rank != 0 or not self.cfg.progress_bar, dynamic_ncols=True)
        last_saved = progress.iteration
        while progress.epoch < self.cfg.epochs and not self._reached_max(progress):
            for images, targets, num_batches in self._epoch_batches(dataset, sampler, progress, collate_fn):
                epoch_position = progress.epoch + progress.batch_in_epoch / max(num_batches, 1)
                lr = self.schedule.apply(self.optimizer, progress.iteration, epoch_position)
                losses = self._step(images, targets, progress)
                progress.iteration += 1
                progress.batch_in_epoch += 1
                self._record(losses, lr, len(images), progress, bar)
                if progress.iteration % self.cfg.checkpoint_period == 0:
                    self._checkpoint(progress)
                    last_saved = progress.iteration
                if self._reached_max(progress):
                    break
            else:
                progress.epoch += 1
                progress.batch_in_epoch = 0
        bar.close()
        if last_saved != progress.iteration or not (self.out_dir / LAST_CHECKPOINT).exists():
            self._checkpoint(progress)
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _reached_max(self, progress: TrainingProgress) -> bool:
        return bool(self.cfg.max_iterations) and progress.iteration >= self.cfg.max_iterations

    def _estimated_total(self, sampler: Any) -> int:
        """Progress-bar total: max_iterations, or epochs x batches in the current epoch."""
        if self.cfg.max_iterations:
            return int(self.cfg.max_iterations)
        return self.cfg.epochs * (len(sampler) // self.cfg.batch_size)

    def _epoch_batches(self, dataset: Dataset, sampler: Any, progress: TrainingProgress, collate_fn: Callable):
        """Batches of the current epoch after the ``batch_in_epoch`` already done (resume mid-epoch)."""
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(progress.epoch)
        if hasattr(dataset, "set_epoch"):  # e.g. the balanced mosaic: new partners every epoch
            dataset.set_epoch(progress.epoch)
        indices = list(iter(sampler))
        num_batches = len(indices) // self.cfg.batch_size
        if num_batches == 0:
            raise ValueError(
                f"epoch {progress.epoch} has {len(indices)} images on this process, fewer than "
                f"{self.cfg.SECTION}.batch_size={self.cfg.batch_size}; lower the batch size"
            )
        samples = SeededSamples(dataset, indices, (self.cfg.seed, progress.epoch, self.rank))
        remaining = range(progress.batch_in_epoch * self.cfg.batch_size, num_batches * self.cfg.batch_size)
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + progress.epoch * 101 + self.rank)
        loader = DataLoader(
            samples, batch_size=self.cfg.batch_size, sampler=remaining, num_workers=self.cfg.num_workers,
            collate_fn=collate_fn, drop_last=True, pin_memory=self.device.type == "cuda", generator=generator,
            persistent_workers=False,
        )
        for images, targets in loader:
            yield images, targets, num_batches

    def _step(self, images, targets, progress: TrainingProgress) -> dict[str, float]:
        """Forward, NaN check, backward, optional clipping, optimizer step; returns loss values."""
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{k: _to_device(v, self.device) for k, v in t.items()} for t in targets]
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.autocast):
            loss_dict = self.model(images, targets)
        total = sum(loss_dict.values())
        names = [*loss_dict, "loss"]
        numbers = torch.stack([*(v.detach().float() for v in loss_dict.values()), total.detach().float()]).tolist()
        values = dict(zip(names, numbers))  # one device sync for all terms
        _fail_on_nonfinite(values, progress, self.out_dir / LAST_CHECKPOINT, self.cfg.SECTION)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.grad_clip_norm:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip_norm)
        self.optimizer.step()
        return values

    def _record(self, losses: dict[str, float], lr: float, num_images: int, progress: TrainingProgress, bar) -> None:
        """Accumulate the log window; every ``log_period`` iterations add a metrics row."""
        for name, value in losses.items():
            self.window[name].append(value)
        self.window_images += num_images
        bar.update(1)
        if progress.iteration % self.cfg.log_period != 0:
            return
        means = _mean_across_ranks({name: float(np.mean(v)) for name, v in self.window.items()})
        elapsed = time.perf_counter() - self.window_start
        _, world_size = distributed_rank_and_size()
        row = {"iteration": progress.iteration, "epoch": progress.epoch, "lr": lr, **means,
               "images_per_s": self.window_images * world_size / max(elapsed, 1e-9)}
        progress.log_rows.append(row)
        bar.set_postfix(loss=f"{means['loss']:.3f}", lr=f"{lr:.2e}", ips=f"{row['images_per_s']:.1f}")
        if self.tensorboard is not None:
            for name, value in row.items():
                if name not in ("iteration", "epoch"):
                    self.tensorboard.add_scalar(name, value, progress.iteration)
        self.window.clear()
        self.window_images = 0
        self.window_start = time.perf_counter()

    def _checkpoint(self, progress: TrainingProgress) -> None:
        """Rank 0 writes last.pth and metrics.csv (both atomically)."""
        if self.rank == 0:
            save_training_state(self.out_dir / LAST_CHECKPOINT, self.model, self.optimizer, progress, asdict(self.cfg),
                                self.fingerprint)
            write_metrics_csv(self.out_dir / METRICS_CSV, progress.log_rows)


class SeededSamples(Dataset):
    """An epoch's samples by position; each is loaded under its own torch random stream, seeded by ``key`` (seed,
    epoch, rank) and its position, so its augmentation is the same whichever loader worker draws it and wherever a
    run resumes (the global stream, which the model's own sampling uses, is left as it was)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], key: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.key = [int(k) for k in key]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Any:
        generator = torch.default_generator  # the CPU stream the transforms draw from
        state = generator.get_state()
        generator.manual_seed(int(np.random.SeedSequence([*self.key, position]).generate_state(1)[0]))
        try:
            return self.dataset[self.indices[position]]
        finally:
            generator.set_state(state)


def _to_device(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


def _fail_on_nonfinite(
    values: dict[str, float], progress: TrainingProgress, checkpoint: Path, section: str = "train"
) -> None:
    """Stop with a message naming the iteration and the loss term when a loss is NaN or infinite (all ranks)."""
    bad = [name for name, value in values.items() if name != "loss" and not math.isfinite(value)]
    if not bad and not math.isfinite(values["loss"]):
        bad = ["loss"]
    flag = torch.tensor([1.0 if bad else 0.0], device=_collective_device())
    if distributed_rank_and_size()[1] > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops together
    if flag.item() == 0:
        return
    terms = ", ".join(f"{name}={value:.4g}" for name, value in values.items())
    where = f"on this rank: {', '.join(bad)}" if bad else "on another rank"
    raise FloatingPointError(
        f"non-finite loss at iteration {progress.iteration} (0-based; epoch {progress.epoch}), {where} [{terms}]. "
        f"Training stopped; the last good state is {checkpoint} (if any). Lower {section}.lr, raise "
        f"{section}.warmup_iters, set {section}.grad_clip_norm, or check the annotations for degenerate boxes."
    )


def _mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average logged scalars over DDP ranks (identity in a single process)."""
    rank_size = distributed_rank_and_size()[1]
    if rank_size == 1:
        return values
    names = sorted(values)
    tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return {name: float(v) / rank_size for name, v in zip(names, tensor.cpu().tolist())}


def _collective_device() -> torch.device:
    """Device for tensors passed to collectives: CUDA under NCCL, CPU otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def write_metrics_csv(path: str | os.PathLike, rows: list[dict[str, float]]) -> None:
    """Write log rows as CSV atomically (columns: iteration, epoch, lr, loss terms, images_per_s)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    if not columns:
        columns = ["iteration", "epoch", "lr", "loss", "images_per_s"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _open_tensorboard(out_dir: Path):
    """A SummaryWriter under out_dir/tensorboard, or None (with a warning) when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        LOGGER.warning("tensorboard is true but the tensorboard package is not installed; logging to CSV only")
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))
