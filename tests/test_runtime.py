"""longtail_seg/runtime.py: a job's --threads shared among the processes torchrun starts on a node."""

from __future__ import annotations

import pytest
import torch

from longtail_seg.runtime import set_torch_threads, threads_per_process


@pytest.mark.parametrize(("threads", "local_world_size", "expected"), [
    (8, None, 8),  # plain python: the process gets all the job's threads
    (8, "1", 8),
    (8, "4", 2),  # torchrun --nproc_per_node=4: a quarter each
    (9, "4", 2),  # rounded down, never more than the job's share in all
    (2, "8", 1),  # more processes than threads: at least one each
    (1, "2", 1),
])
def test_threads_are_divided_among_the_local_torchrun_processes(monkeypatch, threads, local_world_size, expected):
    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    assert threads_per_process(threads) == expected


def test_set_torch_threads_sets_this_process_share_and_none_keeps_torch_default(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        set_torch_threads(4)
        assert torch.get_num_threads() == 2
        set_torch_threads(None)
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("LOCAL_WORLD_SIZE")
        set_torch_threads(3)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
