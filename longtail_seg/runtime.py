"""Where and how a script runs: the device, torch.distributed under torchrun or srun, and seeds.

Shared by training, retraining, inference and pseudo labels (none of which should import another's loop for
them); like the ``utils`` of torchvision's references/detection.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist


def init_distributed_mode(device: str = "auto") -> tuple[int, int, torch.device]:
    """Initialise torch.distributed from torchrun (RANK/WORLD_SIZE) or srun (SLURM_PROCID) env vars.

    Returns (rank, world_size, device). Without those variables it is a no-op (1 process). Like
    torchvision's references/detection ``utils.init_distributed_mode``; under srun MASTER_ADDR and
    MASTER_PORT must be exported by the batch script.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        rank, world_size = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        local_rank = int(os.environ.get("SLURM_LOCALID", 0))
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world_size))
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise RuntimeError("srun launch: export MASTER_ADDR and MASTER_PORT before running the training script")
    else:
        return 0, 1, resolve_device(device)
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
        dist.barrier()
    return rank, world_size, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise the named device (cuda must exist)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} requested but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


def threads_per_process(threads: int) -> int:
    """A job's ``threads`` (Snakemake's, for the whole job) shared among the processes torchrun starts on this node
    (``LOCAL_WORLD_SIZE``), at least 1 each: N processes of N threads each would oversubscribe the cores."""
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, threads // local_processes)


def set_torch_threads(threads: int | None) -> None:
    """``torch.set_num_threads`` with this process's share of a job's ``--threads`` (``threads_per_process``);
    None or 0 leaves torch's default."""
    if threads:
        torch.set_num_threads(threads_per_process(threads))


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
