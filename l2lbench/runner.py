"""Run a suite: plan the missing (task, optimiser, seed) runs, execute them, store them.

A *job* is one (task, optimiser) pair and the seeds still missing for it; its seeds run
batched when the optimiser allows. Every job's runs are written in one transaction as
soon as the job ends, so an interrupted suite keeps everything finished before the
interruption and a re-run computes only what is missing. A plug-in that raises, returns
parameters of the wrong names, shapes or dtypes, fails to meta-train, or runs past the
per-run time limit is recorded as failed runs (with the reason) and the suite goes on.

The time limit (``run_timeout``, ``--run-timeout``) first asks the run to stop where it
runs, see :func:`time_limit`: a SIGALRM timer when the job runs in the main thread of a
process (this one, or a local worker process), an asynchronous exception when it runs in
another thread (a Dask worker). Both stop Python code, and the timer also stops blocking
calls such as ``time.sleep``. A run that does not stop when asked (it swallows every
exception, or never returns from C code) has its worker process ended at
:func:`hard_time_limit` (local workers, where plug-ins always run; see
:mod:`l2lbench.parallel`), and its runs are recorded as failed all the same.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from .errors import ConfigError, L2LBenchError, PluginError, Stopped, UsageError
from .learned.cache import build_for_meta_test, cached, ensure_meta_trained, store_checkpoint, train_checkpoint
from .learner import FunctionalLearner
from .native.build import start_recording as start_native_recording
from .native.build import load as native_load
from .native.build import status as native_status
from .optim.base import capability
from .optim.registry import OptimizerRegistry, ResolvedOptimizer
from .optim.spec import OptimizerSpec
from .parallel import Executor, WorkerLost, run_threads, worker_registry
from .provenance import provenance
from .store import ResultsStore, RunRecord
from .suite import Suite
from .task import TaskSpec
from .timeouts import RunTimeout, time_limit, timeout_reason
from .metatest import PreparedData, SeedOutcome, execution_mode, run_seeds


@dataclass(frozen=True)
class RunJob:
    task: TaskSpec
    optimizer: ResolvedOptimizer
    seeds: tuple[int, ...]
    # Why the job cannot run (e.g. its learned optimiser failed to meta-train): its runs
    # are then recorded as failed with this reason, without running anything.
    failure: str | None = None

    @property
    def label(self) -> str:
        return f"{self.optimizer.name} on {self.task.name}"


@dataclass
class RunSummary:
    planned: int = 0
    skipped: int = 0
    ok: int = 0
    diverged: int = 0
    failed: list[str] = field(default_factory=list)  # one line per failed run


# What a plug-in may raise without ending the benchmark: any error, and sys.exit() too.
# KeyboardInterrupt (Ctrl-C) and RunTimeout are handled apart (see own_interrupts).
_PLUGIN_FAULTS = (Exception, SystemExit)


class PluginInterrupt(RuntimeError):
    """A ``KeyboardInterrupt`` that a plug-in raised itself: a fault of its own runs."""


@contextmanager
def own_interrupts(name: str) -> Iterator[None]:
    """Turn a ``KeyboardInterrupt`` raised inside ``name``'s code into a fault of its own
    runs; a real stop (Ctrl-C, SIGTERM, SIGHUP: :class:`Stopped`) still stops everything.
    Worker processes ignore the stop signals (the parent decides), so there a
    ``KeyboardInterrupt`` is always the plug-in's."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if isinstance(exc, Stopped):
            raise
        raise PluginInterrupt(f"optimizer {name!r} raised KeyboardInterrupt (a plug-in may not stop the benchmark)") from None


@functools.lru_cache(maxsize=1)
def _warm_up() -> None:
    """Import what torch.func imports on first use (a second or more), so that it is not
    counted against, or cut short by, the first run's time limit."""
    from torch.func import grad_and_value, vmap

    vmap(grad_and_value(lambda v: (v * v).sum()), randomness="error")(torch.zeros(2, 1))


class _Checked:
    """A plug-in whose ``update`` must give back parameters named, shaped and typed like
    the ones it got: a wrong shape could otherwise broadcast into silent nonsense."""

    def __init__(self, optimizer: Any, name: str) -> None:
        self._optimizer, self._name = optimizer, name

    def __getattr__(self, attribute: str) -> Any:  # capability flags, meta-parameters, ...
        return getattr(self._optimizer, attribute)

    def init(self, *args: Any, **kwargs: Any) -> Any:
        with own_interrupts(self._name):
            return self._optimizer.init(*args, **kwargs)

    def update(self, grads: Any, state: Any, params: Mapping[str, torch.Tensor], context: Any) -> Any:
        with own_interrupts(self._name):
            result = self._optimizer.update(grads, state, params, context)
        if not isinstance(result, tuple) or len(result) != 2:
            raise PluginError(
                f"optimizer {self._name!r}: update returned {type(result).__name__}, expected a pair (new_params, new_state)"
            )
        new = result[0]
        if not isinstance(new, Mapping) or set(new) != set(params):
            got = sorted(new) if isinstance(new, Mapping) else type(new).__name__
            raise PluginError(
                f"optimizer {self._name!r}: update returned parameters {got}, expected {sorted(params)}"
            )
        for key, old in params.items():
            value = new[key]
            if not isinstance(value, torch.Tensor) or value.shape != old.shape or value.dtype != old.dtype:
                got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise PluginError(
                    f"optimizer {self._name!r}: update returned parameter {key!r} as {got}, "
                    f"expected {tuple(old.shape)} {old.dtype}"
                )
        return result


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against what this machine has."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"invalid device {name!r} (expected cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"invalid device {name!r} (expected cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} is not available here (no CUDA device; expected cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {name!r} does not exist (this machine has {torch.cuda.device_count()} CUDA devices)")
    return device


def plan(
    pairs: Iterable[tuple[TaskSpec, ResolvedOptimizer]],
    seeds: int | Sequence[int],
    store: ResultsStore,
    *,
    rerun: bool = False,
) -> tuple[list[RunJob], int]:
    """Jobs for the runs not yet stored (every run with ``rerun``), and how many runs are
    already stored and skipped. ``seeds``: a count (seeds 0..N-1) or the seed indices."""
    indices = range(seeds) if isinstance(seeds, int) else list(seeds)
    jobs, skipped = [], 0
    for task, optimizer in pairs:
        done = set() if rerun else store.finished_seeds(task.hash, optimizer.hash)
        missing = tuple(s for s in indices if s not in done)
        skipped += len(indices) - len(missing)
        if missing:
            jobs.append(RunJob(task, optimizer, missing))
    return jobs, skipped


@dataclass(frozen=True)
class PortableOptimizer:
    """A resolved optimiser as plain data, rebuilt from the registry inside a worker."""

    spec: OptimizerSpec
    meta_training: Any
    checkpoint: Path | None
    checkpoint_digest: str | None
    numerics: str | None = None  # the parent's, for the checkpoint it will store under its key

    @classmethod
    def of(cls, optimizer: ResolvedOptimizer) -> "PortableOptimizer":
        return cls(optimizer.spec, optimizer.meta_training, optimizer.checkpoint, optimizer.checkpoint_digest,
                   optimizer.numerics)

    def resolve(self, plugins: tuple[str, ...], device: torch.device) -> ResolvedOptimizer:
        """The optimiser as this process builds it; its numerics are this process's own, so
        a worker that cannot take the parent's form stores its runs under their true key."""
        resolved = worker_registry(plugins).resolve(self.spec)
        resolved = dataclasses.replace(
            resolved, meta_training=self.meta_training, checkpoint=self.checkpoint, checkpoint_digest=self.checkpoint_digest
        )
        return dataclasses.replace(resolved, numerics=numerics(resolved, device))


def check_batches(pairs: Iterable[tuple[TaskSpec, ResolvedOptimizer]], loaded: Mapping[Any, Any]) -> None:
    """Refuse, before anything runs, a task (or meta-training task) whose minibatch is
    larger than its dataset's training split."""
    tasks = {t for t, _ in pairs} | {t for _, o in pairs if o.meta_training is not None for t in o.meta_training.tasks}
    for task in sorted(tasks, key=lambda t: t.name):
        available = len(loaded[task.dataset].train_images)
        if task.batch_size > available:
            raise UsageError(f"task {task.name}: batch_size {task.batch_size} is larger than its training split "
                             f"of {available} images (expected at most {available})")


def with_meta_training(
    jobs: list[RunJob],
    *,
    results_dir: Path,
    data_dir: Path,
    device: torch.device,
    executor: Executor = Executor(),
    plugins: tuple[str, ...] = (),
    log: Callable[[str], None] = lambda message: None,
    retrain: bool = False,
) -> list[RunJob]:
    """Meta-train (or fetch from the cache) every learned optimiser the jobs need, once,
    before any meta-test (in parallel when the executor has workers); the jobs come back
    pointing at the checkpoints. ``retrain``: meta-train again even where a cached
    checkpoint exists (it is replaced when the new one is written)."""
    needed: dict[str, ResolvedOptimizer] = {}
    for job in jobs:
        if job.optimizer.hash not in needed and job.optimizer.checkpoint is None and _is_learned(job.optimizer):
            needed[job.optimizer.hash] = job.optimizer
    ready: dict[str, ResolvedOptimizer] = {}
    failures: dict[str, str] = {}
    if executor.in_process:
        for key, optimizer in needed.items():
            try:
                with own_interrupts(optimizer.name):
                    ready[key] = ensure_meta_trained(optimizer, results_dir=results_dir, data_dir=data_dir,
                                                     device=device, log=log, force=retrain)
            except L2LBenchError:
                raise  # bad input (no meta-training config, unwritable cache): stop, exit 2
            except _PLUGIN_FAULTS as exc:  # the plug-in's fault: its runs fail, the others go on
                failures[key] = f"meta-training failed: {_describe(exc)}"
    else:
        to_train = {}
        for key, optimizer in needed.items():
            hit = cached(optimizer, results_dir=results_dir, log=log, force=retrain)
            if hit is not None:
                ready[key] = hit
            else:
                to_train[key] = optimizer
        items = [(key, PortableOptimizer.of(o)) for key, o in to_train.items()]
        for (key, _), outcome in executor.map(_meta_train_in_worker, items, plugins, data_dir, str(device)):
            if isinstance(outcome, WorkerLost):  # the plug-in took its worker process down
                outcome = (None, [], f"meta-training failed: {outcome.reason}")
            checkpoint, lines, failure = outcome
            for line in lines:
                log(line)
            if failure is None:  # only this process writes: the worker handed the checkpoint over
                ready[key] = store_checkpoint(to_train[key], checkpoint, results_dir=results_dir, log=log)
            else:
                failures[key] = failure
    for key, failure in failures.items():
        log(f"{needed[key].name}: {failure}; its runs are recorded as failed")
    return [
        dataclasses.replace(job, optimizer=ready.get(job.optimizer.hash, job.optimizer), failure=failures.get(job.optimizer.hash))
        for job in jobs
    ]


def _meta_train_in_worker(
    item: tuple[str, PortableOptimizer], plugins: tuple[str, ...], data_dir: Path, device: str
) -> tuple[Any, list[str], str | None]:
    """Meta-train in a worker process: the checkpoint (for the parent to write), the log
    lines, and why it failed (None when it did not)."""
    lines: list[str] = []
    try:
        optimizer = item[1].resolve(plugins, torch.device(device))
    except (L2LBenchError, *_PLUGIN_FAULTS) as exc:
        return None, lines, _unresolvable(item[1], plugins, exc)
    if optimizer.numerics != item[1].numerics:  # the parent stores it under a key that names its numerics
        return None, lines, (f"meta-training failed: this worker computes in {optimizer.numerics} form, not the "
                             f"{item[1].numerics} its key names (a worker without the C kernels?)")
    try:
        with own_interrupts(optimizer.name):
            checkpoint = train_checkpoint(optimizer, data_dir=data_dir, device=torch.device(device), progress=False,
                                          log=lines.append)
    except L2LBenchError:
        raise
    except _PLUGIN_FAULTS as exc:
        return None, lines, f"meta-training failed: {_describe(exc)}"
    return checkpoint, lines, None


def execute_job(
    job: RunJob, *, data_dir: Path, device: torch.device, vectorize: bool = True, run_timeout: float | None = None
) -> list[RunRecord]:
    """Run one job; never raises for a plug-in's fault (that becomes failed records).

    Args:
        run_timeout: wall-clock seconds each run may take (``None``: no limit). Building
            the optimiser gets this much too; seeds batched together get this much each.
            A run past its limit is stopped (see :func:`time_limit`) and recorded as
            failed with the reason ``exceeded --run-timeout Ns``.
    """
    with run_threads():  # the numbers must not depend on where the job runs
        return _execute_job(job, data_dir=data_dir, device=device, vectorize=vectorize, run_timeout=run_timeout)


def _execute_job(
    job: RunJob, *, data_dir: Path, device: torch.device, vectorize: bool, run_timeout: float | None
) -> list[RunRecord]:
    info = provenance(device)
    if job.failure is not None:
        return [_failed(job, seed, job.failure, info) for seed in job.seeds]
    start_native_recording()  # the records name the C kernels this job's runs asked for
    if run_timeout is not None:
        info["run_timeout_s"] = run_timeout
        _warm_up()
    try:
        splits = job.task.dataset.load(data_dir)
        data = PreparedData.from_splits(splits, job.task, device)
        learner = FunctionalLearner(job.task.learner.build(job.task.dataset.input_shape, job.task.dataset.num_classes))
        with time_limit(run_timeout):
            optimizer, meta_training = build_for_meta_test(job.optimizer, device)
        optimizer = _Checked(optimizer, job.optimizer.name)
        if meta_training is not None:
            info["meta_training"] = meta_training
    except RunTimeout:
        reason = f"{timeout_reason(run_timeout)} (building the optimizer)"
        return [_failed(job, seed, reason, info) for seed in job.seeds]
    except L2LBenchError as exc:
        return [_failed(job, seed, str(exc), info) for seed in job.seeds]
    except _PLUGIN_FAULTS as exc:
        return [_failed(job, seed, _describe(exc), info, traceback.format_exc()) for seed in job.seeds]

    records: list[RunRecord] = []
    remaining = list(job.seeds)
    if vectorize and len(remaining) > 1 and capability(optimizer, "batchable"):
        start = time.perf_counter()
        try:
            with time_limit(None if run_timeout is None else run_timeout * len(remaining)):
                outcomes = run_seeds(job.task, optimizer, learner, data, remaining, device=device, vectorize=True)
        except RunTimeout:
            info = {**info, "execution": f"{execution_mode(optimizer, len(remaining), coordinates=learner.num_parameters(), device=device)} over {len(remaining)} seeds"}
            return [_failed(job, seed, timeout_reason(run_timeout), info) for seed in remaining]
        except _PLUGIN_FAULTS as exc:
            # Not every plug-in that claims to be batchable survives vmap; the seeds
            # then run one by one through the same step function.
            info = {**info, "execution": f"per seed (batched run failed: {_describe(exc)})"}
        else:
            per_run = (time.perf_counter() - start) / len(outcomes)
            info = {**info, "execution": f"{execution_mode(optimizer, len(outcomes), coordinates=learner.num_parameters(), device=device)} over {len(outcomes)} seeds"}
            return [_record(job, o, per_run, info) for o in outcomes]
    info.setdefault("execution", "per seed")
    for seed in remaining:
        start = time.perf_counter()
        try:
            with time_limit(run_timeout):
                (outcome,) = run_seeds(job.task, optimizer, learner, data, [seed], device=device, vectorize=False)
        except RunTimeout:
            records.append(_failed(job, seed, timeout_reason(run_timeout), info))
            continue
        except _PLUGIN_FAULTS as exc:
            records.append(_failed(job, seed, _describe(exc), info, traceback.format_exc()))
            continue
        records.append(_record(job, outcome, time.perf_counter() - start, info))
    return records


def run_jobs(
    jobs: list[RunJob],
    store: ResultsStore,
    *,
    data_dir: Path,
    device: torch.device,
    vectorize: bool = True,
    executor: Executor = Executor(),
    plugins: tuple[str, ...] = (),
    on_job_done: Callable[[RunJob, list[RunRecord]], None] | None = None,
    run_timeout: float | None = None,
    replace: bool = False,
) -> RunSummary:
    """Execute ``jobs`` (in parallel when the executor has workers), storing each job's
    runs in one transaction as soon as it ends, in this process only.

    ``run_timeout`` limits every run's wall time (see :func:`execute_job`); ``replace``
    lets finished runs replace stored ones (``--rerun``, see :meth:`ResultsStore.put`)."""
    if run_timeout is not None and not (isinstance(run_timeout, (int, float)) and math.isfinite(run_timeout) and run_timeout > 0):
        raise UsageError(f"invalid run timeout: {run_timeout!r} (expected a positive number of seconds)")
    summary = RunSummary(planned=sum(len(j.seeds) for j in jobs))
    kwargs = dict(data_dir=data_dir, device=device, vectorize=vectorize, run_timeout=run_timeout)
    if executor.in_process:
        results: Iterable[tuple[RunJob, list[RunRecord]]] = ((job, execute_job(job, **kwargs)) for job in jobs)
    else:
        failed = [(job, execute_job(job, **kwargs)) for job in jobs if job.failure is not None]
        portable = [
            (i, PortableOptimizer.of(job.optimizer), job.task, job.seeds) for i, job in enumerate(jobs) if job.failure is None
        ]
        results = itertools.chain(failed, (
            (jobs[item[0]], _records(jobs[item[0]], outcome, device, run_timeout))
            for item, outcome in executor.map(
                _execute_in_worker, portable, plugins, data_dir, str(device), vectorize, run_timeout,
                time_limit=lambda item: hard_time_limit(run_timeout, len(item[3])),
            )
        ))
    for job, records in results:
        store.put(records, replace=replace)
        for record in records:
            if record.status == "ok":
                summary.ok += 1
            elif record.status == "diverged":
                summary.diverged += 1
            else:
                summary.failed.append(f"{job.label}, seed {record.seed}: {record.error}")
        if on_job_done is not None:
            on_job_done(job, records)
    return summary


def _execute_in_worker(
    item: tuple[int, PortableOptimizer, TaskSpec, tuple[int, ...]],
    plugins: tuple[str, ...],
    data_dir: Path,
    device: str,
    vectorize: bool,
    run_timeout: float | None = None,
) -> list[RunRecord] | str:
    _, optimizer, task, seeds = item
    try:
        resolved = optimizer.resolve(plugins, torch.device(device))
    except (L2LBenchError, *_PLUGIN_FAULTS) as exc:
        return _unresolvable(optimizer, plugins, exc)
    job = RunJob(task, resolved, seeds)
    return execute_job(job, data_dir=data_dir, device=torch.device(device), vectorize=vectorize, run_timeout=run_timeout)


HARD_LIMIT_GRACE_S = 10.0  # beyond the runs' own limits: loading the data, the first imports


def hard_time_limit(run_timeout: float | None, seeds: int) -> float | None:
    """When a job's process is ended if its runs did not stop when asked (--run-timeout):
    the limits of building the optimiser and of each seed, plus a grace."""
    return None if run_timeout is None else run_timeout * (seeds + 1) + HARD_LIMIT_GRACE_S


def _records(
    job: RunJob, outcome: list[RunRecord] | str | WorkerLost, device: torch.device, run_timeout: float | None = None
) -> list[RunRecord]:
    """A worker's records, or a failed record per seed when it could not build the
    optimiser or its process was lost."""
    if isinstance(outcome, WorkerLost):
        if outcome.timed_out and run_timeout is not None:
            outcome = f"{timeout_reason(run_timeout)} (it did not stop when asked; its process was ended)"
        else:
            outcome = outcome.reason
    if isinstance(outcome, str):
        return [_failed(job, seed, outcome, provenance(device)) for seed in job.seeds]
    return outcome


def _unresolvable(optimizer: PortableOptimizer, plugins: tuple[str, ...], exc: BaseException) -> str:
    """Why a worker process cannot build an optimiser that the parent process could (a
    plug-in that fails to import there): returned, not raised, so that one job fails and
    the others go on."""
    problems = "; ".join(worker_registry(plugins).problems) if plugins else ""
    return f"optimizer {optimizer.spec.name!r} cannot be built in the worker process: {_describe(exc)}" + (
        f" (plug-in problems there: {problems})" if problems else ""
    )


def suite_runs(
    suite: Suite,
    registry: OptimizerRegistry,
    *,
    task_patterns: list[str] | None = None,
    optimizer_names: list[str] | None = None,
    device: torch.device = torch.device("cpu"),
) -> list[tuple[TaskSpec, ResolvedOptimizer]]:
    """The (task, resolved optimiser) pairs a ``run`` of ``suite`` on ``device`` covers.

    Names not in the suite are registry entries with default hyperparameters; a learned
    optimiser gets the suite's meta-training for each task, once per meta-training seed
    (``meta_seeds``: one pair each); every optimiser its :func:`numerics` on ``device``.
    """
    specs = None
    if optimizer_names:
        known = {o.name for o in suite.optimizers}
        specs = [o for o in suite.optimizers if o.name in optimizer_names]
        specs += [OptimizerSpec.from_config(n) for n in optimizer_names if n not in known]
    # Resolved, validated and classified once per optimiser, not once per task: each of
    # these builds the plug-in.
    resolved: dict[int, tuple[ResolvedOptimizer, bool]] = {}
    pairs = []
    for task, spec in suite.pairs(task_patterns, specs):
        if id(spec) not in resolved:
            optimizer = _validated(registry.resolve(spec), suite)
            resolved[id(spec)] = (dataclasses.replace(optimizer, numerics=numerics(optimizer, device)),
                                  _is_learned(optimizer))
        optimizer, learned = resolved[id(spec)]
        trainings = suite.meta_trainings_for(spec, task) if learned else []
        pairs += [(task, dataclasses.replace(optimizer, meta_training=t)) for t in trainings] or [(task, optimizer)]
    return pairs


def numerics(optimizer: ResolvedOptimizer, device: torch.device) -> str:
    """Where an optimiser's numbers are computed, as far as that changes their rounding:
    the device type and, for a learned optimiser on a CPU, whether its LSTM runs in the C
    kernels (``+native``) or in PyTorch operations (``+pytorch``: ``L2LBENCH_NATIVE=0``, no
    compiler). The two forms agree to float rounding only, which meta-training amplifies
    into another optimiser, so they are keyed apart. (Thread counts are fixed instead:
    :data:`l2lbench.parallel.RUN_THREADS`.)"""
    if device.type != "cpu" or not _is_learned(optimizer):
        return device.type
    return "cpu+native" if native_load("lstm") is not None else "cpu+pytorch"


def _validated(optimizer: ResolvedOptimizer, suite: Suite) -> ResolvedOptimizer:
    """``optimizer``, once its factory accepted its hyperparameters: a value the plug-in's
    own validation refuses (``lr = -1``, ``lr = 1e308``) stops the command now, exit 2,
    instead of failing every run later. A factory that crashes is the plug-in's fault and
    fails its runs when they run."""
    try:
        optimizer.build()
    except ConfigError as exc:
        raise ConfigError(f"{suite.source}: {exc}") from None
    except _PLUGIN_FAULTS:
        pass
    return optimizer


def _is_learned(optimizer: ResolvedOptimizer) -> bool:
    try:
        return optimizer.learned
    except _PLUGIN_FAULTS:  # a plug-in that fails to construct is recorded as failed runs later
        return False


def _describe(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")


def _base(job: RunJob, seed: int, info: dict) -> dict:
    return dict(
        task_hash=job.task.hash, optimizer_hash=job.optimizer.hash, seed=seed, task_name=job.task.name,
        optimizer_name=job.optimizer.name, task_config=job.task.config(), optimizer_config=job.optimizer.config(),
        provenance=info,
    )


def _record(job: RunJob, outcome: SeedOutcome, wall_time: float, info: dict) -> RunRecord:
    kernels = native_status()
    return RunRecord(
        **_base(job, outcome.seed, {**info, "native_kernels": kernels} if kernels else info),
        status="diverged" if outcome.diverged_step is not None else "ok",
        diverged_step=outcome.diverged_step,
        train_loss=outcome.train_loss,
        eval_steps=outcome.eval_steps,
        test_loss=outcome.test_loss,
        test_accuracy=outcome.test_accuracy,
        validation_loss=outcome.validation_loss,
        validation_accuracy=outcome.validation_accuracy,
        wall_time_s=wall_time,
    )


def _failed(job: RunJob, seed: int, message: str, info: dict, trace: str | None = None) -> RunRecord:
    info = {**info, "traceback": trace} if trace else info
    return RunRecord(**_base(job, seed, info), status="failed", error=message)
