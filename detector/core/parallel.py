"""Run a per-shard stage function over many shards: in this process, a local process pool, or Ray.

A task is (store root, shard index, settings): the function ``fn(root, shard, settings)`` builds
and writes shard SHARD of the store at ROOT itself and returns a small picklable summary. Results
arrive in completion order, so a progress bar can advance as soon as any shard finishes. An
``Executor`` says where the tasks run: ``local`` (this module) or ``ray`` (one Ray task per shard,
in sppdet.detector.core.executors); both serve the same stage functions and the same shard files.

Worker processes are started with ``spawn`` (safe with threads, CUDA and macOS), and each limits
OpenCV, OpenMP and torch to one thread: N workers then use N cores rather than N x all cores.
``settings`` travels once per worker (not once per task), so it may hold a whole split's image
paths.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import cv2

from sppdet.detector.core.errors import SppdetError

R = TypeVar("R")
ShardFn = Callable[[str, int, Any], R]

PARENT_POLL_SECONDS = 1.0
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
EXECUTORS = ("local", "ray")

# Set in each worker by ``_init_worker``: the stage function and its shared arguments.
_worker_job: tuple[ShardFn, str, Any] | None = None


@dataclass(frozen=True)
class Executor:
    """Where shard tasks run.

    ``local``: this machine, WORKERS processes (1: in this process). ``ray``: one task per shard
    on the Ray cluster at ADDRESS (``auto``: the cluster ``ray start`` made on this node; None:
    a Ray instance started on this machine for the run).
    """

    kind: str = "local"
    workers: int = 1
    address: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise SppdetError(f"--executor {self.kind!r}: choose {' or '.join(EXECUTORS)}")
        if self.kind == "local" and self.address is not None:
            raise SppdetError("--ray-address is for --executor ray: add --executor ray or drop it")
        if self.kind == "ray" and self.workers != 1:
            raise SppdetError(
                "--workers is for --executor local; with --executor ray every CPU of the "
                "cluster runs a shard"
            )
        if self.kind == "ray":  # refuse before any work when Ray is missing
            from sppdet.detector.core.executors import require_ray

            require_ray()

    def describe(self) -> str:
        if self.kind == "ray":
            return f"Ray ({self.address or 'started on this machine'})"
        return f"{self.workers} worker(s)"


def limit_threads() -> None:
    for name in _THREAD_ENV:
        os.environ[name] = "1"  # read by torch/BLAS when they are first imported in this worker
    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _exit_with_parent(parent: int) -> None:
    # A parent killed outright (SIGKILL, OOM) cannot stop its pool: do not outlive it.
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _init_worker(fn: ShardFn, root: str, settings: Any) -> None:
    global _worker_job
    # Ctrl-C is the parent's business: it stops the pool; a worker killed mid-shard leaves only a
    # temporary file, which the next run removes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    limit_threads()
    _worker_job = (fn, root, settings)


def _run_in_worker(shard: int) -> tuple[int, Any]:
    assert _worker_job is not None, "worker not initialised"
    fn, root, settings = _worker_job
    return shard, fn(root, shard, settings)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Limit OpenCV and torch to one thread for the duration, restoring the previous counts."""
    cv_threads = cv2.getNumThreads()
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    cv2.setNumThreads(1)
    if torch is not None:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(cv_threads)
        if torch is not None and torch_threads is not None:
            torch.set_num_threads(torch_threads)


def map_shards(
    fn: ShardFn,
    root: str,
    shard_indices: Sequence[int],
    settings: Any,
    workers: int = 1,
    *,
    executor: Executor | None = None,
    gpu: bool = False,
    sweep: Callable[[str], object] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(shard, fn(root, shard, settings))`` for every shard, in completion order.

    EXECUTOR (default: local with WORKERS) picks where tasks run. Local: ``workers <= 1`` runs in
    this process (single-threaded, no start-up cost); otherwise a spawn pool of
    ``min(workers, len(shard_indices))`` processes. Ray: one task per shard, with a GPU each when
    GPU is set and the cluster has GPUs (see sppdet.detector.core.executors). FN must be a
    module-level function and SETTINGS picklable. If a task raises, or the caller stops early
    (Ctrl-C, an exception, closing the generator), pending tasks are cancelled and the workers
    are terminated; shards already written stay valid. On Ray, SWEEP(ROOT) runs once every task
    has finished, to remove the temporaries of attempts Ray killed and retried (the store knows
    its file names; the kernel does not).
    """
    shards = list(shard_indices)
    if not shards:
        return
    if executor is not None and executor.kind == "ray":
        from sppdet.detector.core.executors import ray_map_shards

        yield from ray_map_shards(fn, root, shards, settings, executor.address, gpu, sweep)
        return
    if executor is not None:
        workers = executor.workers
    if workers <= 1 or len(shards) == 1:
        with single_threaded():
            for shard in shards:
                yield shard, fn(root, shard, settings)
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(shards)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(fn, root, settings),
    )
    finished = False
    try:
        pending: set[Future[tuple[int, Any]]] = {
            pool.submit(_run_in_worker, shard) for shard in shards
        }
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            _terminate(pool)


def _terminate(pool: ProcessPoolExecutor) -> None:
    # Running shards die mid-write and leave only temporaries behind, removed by the next run.
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    # Before 3.14 the executor's process table is the only handle on its workers.
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
