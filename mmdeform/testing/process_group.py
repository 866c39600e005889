"""Multi-process gloo groups in tests that end in a clear failure, never a hang.

:func:`run_processes` starts ``nprocs`` workers and waits at most
``timeout_s`` for all of them (``torch.multiprocessing.spawn`` waits
forever when one rank is stuck in a collective or at exit); workers open
their group with :func:`gloo_group`, which gives every collective a time-out
and destroys the group before the worker returns. The group meets in a file
(``init_method='file://...'``), not on a TCP port that another test run on a
shared machine could take between choosing and binding it.
"""
import datetime
import faulthandler
import gc
import os
import signal
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch.distributed as dist
import torch.multiprocessing as mp

# A collective that waits longer than this raises in the waiting rank.
COLLECTIVE_TIMEOUT_S = 30
# The whole multi-process run, start-up of the workers included.
RUN_TIMEOUT_S = 60


@contextmanager
def gloo_group(rank: int, world_size: int, store_file: str,
               timeout_s: float = COLLECTIVE_TIMEOUT_S) -> Iterator[None]:
    """Join a gloo group of ``world_size`` that meets in ``store_file``; destroy it on exit.

    Objects that hold the group (a Runner's DDP wrapper) must be released
    inside the block: the group's threads are then joined by the destroy,
    after a barrier, not later when the last reference goes (a rank was seen
    stuck there for minutes after the other had exited). Also sets ``RANK``,
    ``LOCAL_RANK`` and ``WORLD_SIZE`` (read by mmengine).

    Args:
        rank (int): This process's rank.
        world_size (int): Number of processes.
        store_file (str): A path that does not exist yet, the same for all ranks.
        timeout_s (float): Time-out of the rendezvous and of every collective.
    """
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group('gloo', init_method=f'file://{store_file}', rank=rank,
                            world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    finished = False
    try:
        yield
        finished = True
    finally:
        if finished:  # no rank tears down while another still talks to it
            dist.barrier()
        gc.collect()  # objects that hold the group (a DDP wrapper) go first
        dist.destroy_process_group()


def _dump_stacks_on_sigusr1(rank: int, worker: Callable, *args) -> None:
    """``worker(rank, *args)``; SIGUSR1 prints every thread's Python stack to stderr."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    worker(rank, *args)


def run_processes(worker: Callable, args: Sequence = (), nprocs: int = 2,
                  timeout_s: float = RUN_TIMEOUT_S, start_method: str = 'spawn') -> None:
    """``worker(rank, *args)`` in ``nprocs`` processes, all done within ``timeout_s``.

    Args:
        worker (callable): A module-level function (``spawn`` pickles it).
        args (Sequence): Its arguments after the rank.
        nprocs (int): Number of processes.
        timeout_s (float): Limit for the whole run.
        start_method (str): ``'spawn'`` or ``'fork'``.

    Raises:
        torch.multiprocessing.ProcessRaisedException: a worker raised (its
            traceback is in the message; the others are ended).
        TimeoutError: workers still running at the limit (named; their Python
            stacks are printed to stderr, then all are killed).
    """
    context = mp.start_processes(_dump_stacks_on_sigusr1, args=(worker, *args), nprocs=nprocs,
                                 join=False, start_method=start_method)
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.01)):
            if time.monotonic() >= deadline:
                alive = [rank for rank, p in enumerate(context.processes) if p.is_alive()]
                for rank in alive:
                    os.kill(context.processes[rank].pid, signal.SIGUSR1)
                time.sleep(1)  # for the stack dumps
                raise TimeoutError(f'{getattr(worker, "__name__", worker)}: ranks {alive} of '
                                   f'{nprocs} still running after {timeout_s:.0f} s (stuck in '
                                   'a collective or at exit?; their stacks are in stderr); '
                                   'killed them')
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
        for process in context.processes:
            process.join(5)
