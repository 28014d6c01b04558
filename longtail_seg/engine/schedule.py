"""Learning-rate schedules (linear warmup, then epoch steps or cosine) and optimizer construction."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from longtail_seg.engine.config import check_lr_schedule


class LRSchedule:
    """Learning rate as a pure function of progress, so resuming needs only the iteration and epoch.

    * warmup: over the first ``warmup_iters`` iterations the rate is multiplied by a factor rising
      linearly from ``warmup_factor`` to 1 (torchvision's references/detection warmup).
    * ``steps``: a list of ``[epoch, lr]`` pairs; from the start of (0-based) epoch ``epoch`` the rate
      is ``lr``. Before the first step it is ``base_lr``. The report's "update the lr in epoch
      20/24/26/27/28 to 3e-2/.../3e-6" is ``[[20, 3e-2], [24, 3e-3], [26, 3e-4], [27, 3e-5], [28, 3e-6]]``.
    * ``cosine``: from ``base_lr`` down to ``min_lr`` over the whole run (by fractional epoch, or by
      iteration when the run is limited by ``max_iterations``).
    """

    def __init__(
        self,
        base_lr: float,
        kind: str = "cosine",
        steps: Sequence[Sequence[float]] | None = None,
        epochs: int = 1,
        max_iterations: int | None = None,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
        min_lr: float = 0.0,
    ) -> None:
        if kind not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown lr schedule {kind!r}; use 'cosine', 'constant' or a list of [epoch, lr] steps")
        self.base_lr = float(base_lr)
        self.kind = kind
        self.steps = sorted((int(epoch), float(lr)) for epoch, lr in (steps or []))
        if kind == "step" and not self.steps:
            raise ValueError("a step lr schedule needs at least one [epoch, lr] pair")
        self.epochs = max(int(epochs), 1)
        self.max_iterations = max_iterations
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.min_lr = float(min_lr)

    @classmethod
    def from_config(cls, lr_schedule: Any, **kwargs: Any) -> LRSchedule:
        """``lr_schedule`` is "cosine", "constant" or a list of [epoch, lr] pairs (the config's forms)."""
        if isinstance(lr_schedule, str):
            return cls(kind=lr_schedule, **kwargs)
        check_lr_schedule(lr_schedule, "train.lr_schedule")  # the config's own check of the step list
        return cls(kind="step", steps=lr_schedule, **kwargs)

    def lr_at(self, iteration: int, epoch: float) -> float:
        """Rate at global ``iteration`` and fractional ``epoch`` (0-based; epoch 2.5 = half-way through the third)."""
        return self._base_at(iteration, epoch) * self._warmup_multiplier(iteration)

    def _warmup_multiplier(self, iteration: int) -> float:
        if iteration >= self.warmup_iters:
            return 1.0
        alpha = iteration / self.warmup_iters
        return self.warmup_factor * (1.0 - alpha) + alpha

    def _base_at(self, iteration: int, epoch: float) -> float:
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "step":
            lr = self.base_lr
            for step_epoch, step_lr in self.steps:
                if epoch >= step_epoch:
                    lr = step_lr
            return lr
        if self.max_iterations:
            progress = iteration / self.max_iterations
        else:
            progress = epoch / self.epochs
        progress = min(max(progress, 0.0), 1.0)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int, epoch: float) -> float:
        """Set every param group's rate for this iteration; returns it (for logging)."""
        lr = self.lr_at(iteration, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr


def parameter_groups(params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices/kernels only; none on biases and norm parameters (1-d tensors)."""
    decay, no_decay = [], []
    for _, param in params:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float = 1e-4, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the model's trainable parameters (frozen ones are skipped)."""
    groups = parameter_groups(model.named_parameters(), weight_decay)
    if not groups[0]["params"] and len(groups) == 1:
        raise ValueError("the model has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown train.optimizer {name!r}; choose 'sgd' or 'adamw'")
