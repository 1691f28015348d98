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
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .errors import UsageError

BACKENDS = ("loky", "dask")
Item = TypeVar("Item")

#: Torch threads of every meta-test and meta-training, wherever it runs. A sum split over
#: threads rounds differently, and meta-training amplifies a rounding difference into
#: another optimiser (the smoke suite's LSTM ended at a loss of 7.7 or 12.3 with one or
#: two threads); with the count fixed, a run's numbers depend on its key alone, never on
#: --workers or the process that ran it. Parallelism comes from the workers.
RUN_THREADS = 1


@contextmanager
def run_threads() -> Iterator[None]:
    """Run the body with :data:`RUN_THREADS` torch threads (see there why).

    The main thread restores the previous count afterwards; other threads (a Dask worker's)
    leave it set, since restoring a process-wide count there could change it under a run
    on a sibling thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(RUN_THREADS)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            torch.set_num_threads(previous)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Executor:
    """Where work runs: ``workers`` processes on this machine (``loky``) or a Dask cluster.

    Every run and meta-training takes :data:`RUN_THREADS` torch threads wherever it runs.

    Attributes:
        workers: worker processes; 1 runs everything in this process.
        backend: ``loky`` (local processes) or ``dask`` (a ``dask.distributed`` cluster).
        scheduler: the Dask scheduler address (``tcp://host:8786``); required for dask.
    """

    workers: int = 1
    backend: str = "loky"
    scheduler: str | None = None

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

    def describe(self) -> str:
        threads = f"{RUN_THREADS} torch thread{'s' if RUN_THREADS > 1 else ''} per run"
        if self.in_process:
            return f"in this process ({threads})"
        if self.backend == "dask":
            return f"on the Dask cluster at {self.scheduler} ({threads})"
        return f"on {self.workers} worker processes ({threads})"

    def map(self, fn: Callable[..., Any], items: Iterable[Item], *args: Any) -> Iterator[tuple[Item, Any]]:
        """``(item, fn(item, *args))`` for every item, in completion order."""
        items = list(items)
        if self.in_process:
            for item in items:
                yield item, fn(item, *args)
            return
        from joblib import Parallel, delayed, parallel_config

        calls = (delayed(_in_worker)(fn, i, item, *args) for i, item in enumerate(items))
        if self.backend == "dask":
            client = _dask_client(self.scheduler)
            try:
                with parallel_config(backend="dask", client=client):
                    for index, result in Parallel(n_jobs=-1, return_as="generator_unordered")(calls):
                        yield items[index], result
            finally:
                client.close()
            return
        with parallel_config(backend="loky", inner_max_num_threads=RUN_THREADS):
            for index, result in Parallel(n_jobs=min(self.workers, len(items) or 1), return_as="generator_unordered")(calls):
                yield items[index], result


def _in_worker(fn: Callable[..., Any], index: int, item: Any, *args: Any) -> tuple[int, Any]:
    from .training import keep_freed_memory

    _follow_parent()
    keep_freed_memory()  # a worker process exists to train (idempotent, a few microseconds)
    return index, fn(item, *args)


PARENT_CHECK_S = 0.5  # how often a worker process looks whether its parent still lives
_followed: list[int] = []  # the parent's pid, once this worker process follows it


def _follow_parent() -> None:
    """In a worker process (not a Dask worker's thread): leave stopping to the parent, and
    die with it. Ctrl-C reaches the whole process group, but whether and how to stop is
    the parent's to decide (it ends the workers as it stops), so the stop signals are
    ignored here; and a worker whose parent is gone, even by kill -9, exits within
    ``PARENT_CHECK_S`` instead of finishing work nobody will store."""
    if _followed or threading.current_thread() is not threading.main_thread():
        return
    import signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    _followed.append(os.getppid())

    def watch() -> None:
        while os.getppid() == _followed[0]:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="l2lbench-parent-watch", daemon=True).start()


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
