"""run_processes / gloo_group: a stuck rank becomes a clear failure within the limits."""
import time

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing import ProcessRaisedException

from mmdeform.testing import gloo_group, run_processes


def _sum_ranks(rank, store_file, out_dir):
    with gloo_group(rank, 2, store_file):
        total = torch.tensor([rank + 1.0])
        dist.all_reduce(total)
    assert not dist.is_initialized()  # destroyed on leaving the block
    torch.save(total, f'{out_dir}/rank{rank}.pt')


def _rank1_never_joins_the_collective(rank, store_file):
    with gloo_group(rank, 2, store_file, timeout_s=2):
        if rank == 0:
            dist.all_reduce(torch.ones(1))
        else:
            time.sleep(8)


def _sleeps(rank):
    time.sleep(60 if rank == 1 else 0)


def test_a_group_runs_and_is_destroyed(tmp_path):
    run_processes(_sum_ranks, (str(tmp_path / 'store'), str(tmp_path)), start_method='fork')
    for rank in range(2):
        assert torch.load(tmp_path / f'rank{rank}.pt').item() == 3.0


def test_a_collective_waiting_for_a_missing_rank_raises(tmp_path):
    start = time.monotonic()
    with pytest.raises(ProcessRaisedException, match='(?i)timed? ?out'):
        run_processes(_rank1_never_joins_the_collective, (str(tmp_path / 'store'), ),
                      timeout_s=30, start_method='fork')
    assert time.monotonic() - start < 20


def test_a_process_past_the_limit_is_killed_and_named(capfd):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r'_sleeps: ranks \[1\] of 2 still running after 2 s'):
        run_processes(_sleeps, timeout_s=2, start_method='fork')
    assert time.monotonic() - start < 15
    assert 'in _sleeps' in capfd.readouterr().err  # the stuck rank's stack
