"""Run independent pieces of work (meta-test jobs, meta-trainings) on several processes or
a Dask cluster, through joblib, yielding each result as soon as it is ready.

Only plain data crosses process boundaries (task specs, optimiser specs, paths): each
worker rebuilds the optimiser from the registry with the same plug-ins, so plug-ins
loaded from a file work on workers too. The caller (one process) writes every result to
the store, so there is exactly one writer however many workers compute.

With the Dask backend the workers must see the same data folder and results folder (a
shared file system), because they read datasets and checkpoints from disk.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .errors import UsageError

BACKENDS = ("loky", "dask")
Item = TypeVar("Item")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Executor:
    """Where work runs: ``workers`` processes on this machine (``loky``) or a Dask cluster.

    Attributes:
        workers: worker processes; 1 runs everything in this process.
        backend: ``loky`` (local processes) or ``dask`` (a ``dask.distributed`` cluster).
        scheduler: the Dask scheduler address (``tcp://host:8786``); required for dask.
        threads: torch threads per worker; by default cores // workers, so that
            workers x threads = cores and workers do not fight over cores.
    """

    workers: int = 1
    backend: str = "loky"
    scheduler: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; expected one of: {', '.join(BACKENDS)}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise UsageError(f"invalid number of workers: {self.workers!r} (expected a positive integer)")
        if self.backend == "dask" and not self.scheduler:
            raise UsageError("the dask backend needs --scheduler ADDRESS (e.g. tcp://10.0.0.1:8786)")

    @property
    def in_process(self) -> bool:
        return self.backend == "loky" and self.workers == 1

    @property
    def threads_per_worker(self) -> int:
        return self.threads or max(1, available_cores() // self.workers)

    def describe(self) -> str:
        if self.in_process:
            return "in this process"
        if self.backend == "dask":
            return f"on the Dask cluster at {self.scheduler}"
        return f"on {self.workers} worker processes x {self.threads_per_worker} torch threads"

    def map(self, fn: Callable[..., Any], items: Iterable[Item], *args: Any) -> Iterator[tuple[Item, Any]]:
        """``(item, fn(item, *args))`` for every item, in completion order."""
        items = list(items)
        if self.in_process:
            for item in items:
                yield item, fn(item, *args)
            return
        from joblib import Parallel, delayed, parallel_config

        calls = (delayed(_in_worker)(self.threads_per_worker, fn, i, item, *args) for i, item in enumerate(items))
        if self.backend == "dask":
            client = _dask_client(self.scheduler)
            try:
                with parallel_config(backend="dask", client=client):
                    for index, result in Parallel(n_jobs=-1, return_as="generator_unordered")(calls):
                        yield items[index], result
            finally:
                client.close()
            return
        with parallel_config(backend="loky", inner_max_num_threads=self.threads_per_worker):
            for index, result in Parallel(n_jobs=min(self.workers, len(items) or 1), return_as="generator_unordered")(calls):
                yield items[index], result


def _in_worker(threads: int, fn: Callable[..., Any], index: int, item: Any, *args: Any) -> tuple[int, Any]:
    import torch

    from .training import keep_freed_memory

    torch.set_num_threads(threads)
    keep_freed_memory()  # a worker process exists to train (idempotent, a few microseconds)
    return index, fn(item, *args)


def _dask_client(address: str | None) -> Any:
    try:
        from dask.distributed import Client
    except ImportError:
        raise UsageError("the dask backend needs dask.distributed: pip install 'l2lbench[cluster]'") from None
    try:
        return Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from None


def worker_registry(plugins: tuple[str, ...]) -> Any:
    """The optimiser registry of a worker process (built once per set of plug-ins and
    their files' versions: a reused worker never runs a plug-in file's older text); a
    plug-in that fails here only (the parent checked it) is a problem of its own runs."""
    stamps = []
    for plugin in plugins:
        try:
            stat = os.stat(plugin)
            stamps.append((stat.st_mtime_ns, stat.st_size))
        except OSError:  # a module name, or a file that is gone: the registry says which
            stamps.append(None)
    return _worker_registry(plugins, tuple(stamps))


@functools.lru_cache(maxsize=8)
def _worker_registry(plugins: tuple[str, ...], stamps: tuple[Any, ...]) -> Any:
    from .optim.registry import OptimizerRegistry

    return OptimizerRegistry.default(plugins, strict=False)
