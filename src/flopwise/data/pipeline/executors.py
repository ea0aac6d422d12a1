"""Executors: run a list of unit tasks in this process, in local worker processes, or on Ray Data.

Executors know nothing of what a task does: each gets a function and typed tasks (pickled to the
workers) and reports how many have finished. Every task reads and writes the shared work directory (on
Ray a path every node can see), so resumption and caching work the same on all of them.
`ray_address` "auto" connects to a running Ray cluster if there is one, else starts a local Ray.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence

from flopwise.errors import DataError

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (phase, done, total)


def run_tasks(
    fn: Callable,
    tasks: Sequence,
    phase: str,
    *,
    workers: int,
    ray_address: str | None = None,
    progress: Progress | None = None,
) -> None:
    """Run fn(task) for every task; report (phase, finished, total) as they finish."""
    total = len(tasks)
    if progress:
        progress(phase, 0, total)
    if not tasks:
        return
    if ray_address:
        finished: Iterator[int] = _run_ray(fn, tasks, ray_address, workers)
    elif workers <= 1 or total == 1:
        finished = _run_serial(fn, tasks)
    else:
        finished = _run_processes(fn, tasks, workers)
    for done in finished:
        if progress:
            progress(phase, done, total)


def _run_serial(fn, tasks) -> Iterator[int]:
    for i, t in enumerate(tasks, 1):
        fn(t)
        yield i


def _run_processes(fn, tasks, workers: int) -> Iterator[int]:
    import multiprocessing as mp
    import signal

    ctx = mp.get_context("fork")
    # SIGTERM and SIGINT stay blocked from each fork until the worker's own handlers are in place (_worker_signals).
    # The pool's threads, which fork replacement workers, are started here and inherit the mask too. A signal sent to
    # this process meanwhile is delivered once the mask is restored.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        pool = ctx.Pool(min(workers, len(tasks)), maxtasksperchild=64, initializer=_worker_signals)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    with pool:
        for i, _ in enumerate(pool.imap_unordered(fn, tasks), 1):
            yield i


def _worker_signals() -> None:
    """A forked worker inherits its parent's Python signal handlers. The trainer's SIGTERM handler only sets a flag
    (train/preempt.py), so a worker that kept it would outlive Pool.terminate's SIGTERM and its join would wait
    forever (`flopwise train` hung preparing a corpus). Workers die on SIGTERM; Ctrl-C is the parent's to handle, and
    the parent ends the pool. The worker starts with SIGTERM blocked (_run_processes): a terminate that came before
    this point is pending and ends it on the unblock, instead of reaching the inherited handler and being lost (a
    pool whose tasks were done before its last worker started hung a CI run that way)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})  # a pending SIGINT is discarded


# ---------------------------------------------------------------- Ray


def _init_ray(address: str, workers: int):
    try:
        import ray
    except ImportError:  # pragma: no cover
        raise DataError("--ray needs the `ray[data]` package (pip install 'ray[data]')") from None
    if ray.is_initialized():
        return ray
    env = {"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "TOKENIZERS_PARALLELISM": "false"}}
    if address == "auto":
        try:
            ray.init(address="auto", runtime_env=env, log_to_driver=False)
            return ray
        except (ConnectionError, RuntimeError):
            log.info("no running Ray cluster found; starting a local one with %d CPUs", workers)
        ray.init(num_cpus=workers, runtime_env=env, log_to_driver=False, include_dashboard=False)
    else:
        try:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"--ray {address}: cannot connect to the Ray cluster ({exc})") from None
    return ray


def _row_fn(fn):
    def run(row: dict) -> dict:
        fn(pickle.loads(row["task"]))
        return {"done": 1}

    return run


def _run_ray(fn, tasks, address: str, workers: int) -> Iterator[int]:
    """One Ray Data row per task (the task pickled), mapped with one CPU each."""
    ray = _init_ray(address, workers)
    ds = ray.data.from_items([{"task": pickle.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
    for done, _ in enumerate(ds.map(_row_fn(fn), num_cpus=1).iter_rows(), 1):
        yield done
