"""Run independent pieces of work (meta-test jobs, meta-trainings) on worker processes or
a Dask cluster, yielding each result as soon as it is ready.

Only plain data crosses process boundaries (task specs, optimiser specs, paths): each
worker rebuilds the optimiser from the registry with the same plug-ins, so plug-ins
loaded from a file work on workers too. The caller (one process) writes every result to
the store, so there is exactly one writer however many workers compute.

Local worker processes (``pebble``'s process pool, started with ``spawn``) contain what a
plug-in does to its process: a worker that dies (``os._exit``, a segfault, the kernel's
OOM killer) or runs past its item's hard time limit is ended and replaced, and that item
comes back as a :class:`WorkerLost` with the reason while the others go on; each worker's
heap is capped (``max_memory``, ``RLIMIT_DATA``), so an allocation storm fails the run
that made it instead of the machine.

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

from l2lbench.errors import UsageError

BACKENDS = ("local", "dask")
# "loky", the name of the local backend before it ran on pebble, still means "local".
BACKEND_ALIASES = {"loky": "local"}
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
class WorkerLost:
    """What comes back for an item whose worker process died or was ended: why, and
    whether it was ended for running past its time limit."""

    reason: str
    timed_out: bool = False


def machine_memory() -> int | None:
    """Physical memory of this machine in bytes (None where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_max_memory(workers: int) -> int | None:
    """The memory cap of each of ``workers`` local worker processes: 90% of the machine
    shared between them (the rest for the parent and the system)."""
    total = machine_memory()
    return None if total is None else int(total * 0.9) // max(1, workers)


@dataclass(frozen=True)
class Executor:
    """Where work runs: in this process, on ``workers`` local processes, or a Dask cluster.

    Every run and meta-training takes :data:`RUN_THREADS` torch threads wherever it runs.

    Attributes:
        workers: worker processes; 1 runs everything in this process unless ``isolate``.
        backend: ``local`` (processes on this machine) or ``dask`` (a ``dask.distributed``
            cluster).
        scheduler: the Dask scheduler address (``tcp://host:8786``); required for dask.
        isolate: run even a single worker's items in a child process (plug-ins: their
            crash, hang or memory blow-up must not take the command with it).
        max_memory: bytes of heap each local worker process may take (None: no cap).
    """

    workers: int = 1
    backend: str = "local"
    scheduler: str | None = None
    isolate: bool = False
    max_memory: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", BACKEND_ALIASES.get(self.backend, self.backend))
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; expected one of: {', '.join(BACKENDS)}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise UsageError(f"invalid number of workers: {self.workers!r} (expected a positive integer)")
        if self.backend == "dask" and not self.scheduler:
            raise UsageError("the dask backend needs --scheduler ADDRESS (e.g. tcp://10.0.0.1:8786)")

    @property
    def in_process(self) -> bool:
        return self.backend == "local" and self.workers == 1 and not self.isolate

    def describe(self) -> str:
        threads = f"{RUN_THREADS} torch thread{'s' if RUN_THREADS > 1 else ''} per run"
        if self.in_process:
            return f"in this process ({threads})"
        if self.backend == "dask":
            return f"on the Dask cluster at {self.scheduler} ({threads})"
        processes = "1 worker process" if self.workers == 1 else f"{self.workers} worker processes"
        cap = f", at most {self.max_memory / 2**30:.1f} GiB each" if self.max_memory else ""
        return f"on {processes} ({threads}{cap})"

    def map(
        self,
        fn: Callable[..., Any],
        items: Iterable[Item],
        *args: Any,
        time_limit: Callable[[Item], float | None] = lambda item: None,
    ) -> Iterator[tuple[Item, Any]]:
        """``(item, fn(item, *args))`` for every item, in completion order.

        On local worker processes an item whose process dies, or that runs longer than
        ``time_limit(item)`` seconds (then its process is ended), gives a
        :class:`WorkerLost` instead; the other items go on, on a fresh process. An exception
        ``fn`` raises is raised here.
        """
        items = list(items)
        if self.in_process:
            for item in items:
                yield item, fn(item, *args)
            return
        if self.backend == "dask":
            yield from self._map_dask(fn, items, *args)
            return
        yield from self._map_local(fn, items, args, time_limit)

    def _map_local(
        self, fn: Callable[..., Any], items: list[Item], args: tuple, time_limit: Callable[[Item], float | None]
    ) -> Iterator[tuple[Item, Any]]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures import TimeoutError as PastTimeLimit
        from concurrent.futures.process import BrokenProcessPool

        from pebble import ProcessExpired, ProcessPool

        if not items:
            return
        # spawn, not fork: forking a process that runs torch's thread pools can deadlock.
        pool = ProcessPool(max_workers=min(self.workers, len(items)), context=multiprocessing.get_context("spawn"),
                           initializer=_start_worker, initargs=(self.max_memory,))
        try:
            futures = {
                pool.schedule(_in_worker, args=(fn, i, item, *args), timeout=time_limit(item)): i
                for i, item in enumerate(items)
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    item = items[futures[future]]
                    try:
                        _, result = future.result()
                    except PastTimeLimit as exc:
                        result = WorkerLost(f"exceeded its time limit of {exc.args[1]:g}s; its process was ended", True)
                    except ProcessExpired as exc:
                        result = WorkerLost(_death(exc.exitcode, self.max_memory))
                    except BrokenProcessPool as exc:  # no worker could start (e.g. its memory cap)
                        result = WorkerLost(f"no worker process could run it ({exc})")
                    yield item, result
            pool.close()
        finally:
            pool.stop()  # on an exception or a stop signal: end the workers now, not after their items
            pool.join(timeout=10)

    def _map_dask(self, fn: Callable[..., Any], items: list[Item], *args: Any) -> Iterator[tuple[Item, Any]]:
        from joblib import Parallel, delayed, parallel_config

        calls = (delayed(_in_worker)(fn, i, item, *args) for i, item in enumerate(items))
        client = _dask_client(self.scheduler)
        try:
            with parallel_config(backend="dask", client=client):
                for index, result in Parallel(n_jobs=-1, return_as="generator_unordered")(calls):
                    yield items[index], result
        finally:
            client.close()


def _death(exitcode: int | None, max_memory: int | None) -> str:
    """Why a worker process ended, from its exit code (negative: the signal that killed it)."""
    import signal

    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else str(-exitcode)
        if -exitcode == signal.SIGKILL:
            cap = f" each worker may take {max_memory / 2**30:.1f} GiB, see --max-memory" if max_memory else ""
            return f"its process was killed by {name} (out of memory?{cap})"
        return f"its process was killed by {name}"
    return f"its process exited with code {exitcode}"


def _start_worker(max_memory: int | None) -> None:
    """A local worker process's start: follow the parent (below), import torch (here, not
    inside an item's time limit) and cap the heap."""
    import torch  # noqa: F401

    _follow_parent()
    if max_memory:
        import resource

        # RLIMIT_DATA counts the heap and private anonymous mappings (Linux >= 4.7), which is
        # where tensors live, and not the shared libraries torch maps: past it an allocation
        # fails in the run that asked for it.
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = max_memory if hard == resource.RLIM_INFINITY else min(max_memory, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _in_worker(fn: Callable[..., Any], index: int, item: Any, *args: Any) -> tuple[int, Any]:
    from l2lbench.fastpath.memory import keep_freed_memory

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
    from l2lbench.plugin.registry import OptimizerRegistry

    return OptimizerRegistry.default(plugins, strict=False)
