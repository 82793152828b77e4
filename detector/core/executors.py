"""The Ray executor of ``map_shards``: one Ray task per shard, retried when its worker dies.

Ray is an optional dependency (``pip install 'sppdet[ray]'``): it is imported only here and only
when ``--executor ray`` asks for it. A task is the same ``fn(root, shard, settings)`` the local
executor runs: it writes its own shard file through ``ShardedStore.write_shard``, so storage has
one code path whatever runs the tasks.

Fault tolerance comes from the store, not from Ray: a shard becomes visible by an atomic rename
of a temporary private to its attempt, so a worker killed mid-shard leaves only a temporary, the
retried attempt (Ray resubmits tasks whose worker or node died, up to ``MAX_RETRIES`` times)
writes the whole shard again, and the same shard written twice is replaced, never duplicated.
Errors raised by the task itself are not retried: they would fail the same way again.

Every node must see the work folder and the images at the same paths (a shared filesystem), and
have sppdet installed; settings travel through Ray's object store once and are deserialised once
per worker process, not once per task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sppdet.detector.core.errors import SppdetError

if TYPE_CHECKING:
    from sppdet.detector.core.parallel import ShardFn

INSTALL_HINT = "pip install 'sppdet[ray]' (or pip install 'ray>=2.9')"
MAX_RETRIES = 3  # attempts after the first, for tasks whose worker process or node died
MIN_IN_FLIGHT = 64  # tasks submitted ahead of the results: bounds the driver's bookkeeping

# Per worker process: the settings of the current run, keyed by their object id.
_worker_settings: tuple[str, Any] | None = None


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SppdetError(f"--executor ray needs Ray, not installed here: {INSTALL_HINT}") from None
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Connect to the Ray cluster at ADDRESS (None: start one on this machine) for the duration.

    A session already open in this process (``ray.init`` by the caller, e.g. a test or a
    notebook) is used as it is and left open.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"logging_level": logging.WARNING}
    if address is None:
        options["include_dashboard"] = False
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SppdetError(
            f"--ray-address {address}: cannot join a Ray cluster ({first}); start one with "
            "`ray start --head`, or leave out --ray-address to start Ray on this machine"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _settings_of(box: list[Any]) -> Any:
    # BOX holds the settings' object ref unresolved (Ray resolves only top-level arguments), so a
    # worker fetches and deserialises them once, not once per task.
    global _worker_settings
    ref = box[0]
    key = ref.hex()
    if _worker_settings is None or _worker_settings[0] != key:
        import ray

        _worker_settings = (key, ray.get(ref))
    return _worker_settings[1]


def _run_task(fn: ShardFn, root: str, shard: int, box: list[Any]) -> Any:
    from sppdet.detector.core.parallel import limit_threads

    limit_threads()  # one task per CPU: each uses one thread
    return fn(root, shard, _settings_of(box))


def _failure(ray: Any, exc: BaseException, root: str, shard: int) -> BaseException:
    """What the caller sees when a task failed: the task's own SppdetError as it is, the
    task's bug with its traceback, and a lost worker or node (after the retries) as one line."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        return cause if isinstance(cause, SppdetError) else exc
    lines = str(exc).strip().splitlines()
    why = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return SppdetError(
        f"{root}: shard {shard} failed on {MAX_RETRIES + 1} attempts ({why}); finished shards "
        "are kept, rerun the same command to resume"
    )


def ray_map_shards(
    fn: ShardFn,
    root: str | Path,
    shard_indices: Sequence[int],
    settings: Any,
    address: str | None = None,
    gpu: bool = False,
    sweep: Callable[[str], object] | None = None,
) -> Iterator[tuple[int, Any]]:
    """``map_shards`` on Ray: yield ``(shard, fn(root, shard, settings))`` in completion order.

    Each task takes one CPU, and one GPU when GPU is set and the cluster has GPUs. ROOT and every
    path in SETTINGS must be valid on every node: ROOT is made absolute here. Stopping early
    (an error, Ctrl-C, closing the generator) cancels the tasks still running.
    """
    shards = list(shard_indices)
    if not shards:
        return
    root = str(Path(root).absolute())
    with ray_session(address) as ray:
        resources = ray.cluster_resources()
        num_gpus = 1 if gpu and resources.get("GPU", 0) >= 1 else 0
        task = ray.remote(_run_task).options(
            num_cpus=1, num_gpus=num_gpus, max_retries=MAX_RETRIES, retry_exceptions=False
        )
        box = [ray.put(settings)]
        in_flight = max(MIN_IN_FLIGHT, 4 * int(resources.get("CPU", 1)))
        todo = iter(shards)
        pending: dict[Any, int] = {}
        try:
            while True:
                for shard in todo:
                    pending[task.remote(fn, root, shard, box)] = shard
                    if len(pending) >= in_flight:
                        break
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                shard = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    raise _failure(ray, exc, root, shard) from None
                yield shard, result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
    # Every task has finished, so a temporary left now belongs to an attempt that was killed.
    if sweep is not None:
        sweep(str(root))
