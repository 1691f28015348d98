"""Execute planned jobs (:mod:`l2lbench.plan.runs`) and store their runs.

A job's seeds run batched when the optimiser allows. Every job's runs are written in one transaction as
soon as the job ends, so an interrupted suite keeps everything finished before the
interruption and a re-run computes only what is missing. A plug-in that raises, returns
parameters of the wrong names, shapes or dtypes, fails to meta-train, or runs past the
per-run time limit is recorded as failed runs (with the reason) and the suite goes on.

The time limit (``run_timeout``, ``--run-timeout``) first asks the run to stop where it
runs, see :func:`l2lbench.execute.timeouts.time_limit`: a SIGALRM timer when the job runs in the main thread of a
process (this one, or a local worker process), an asynchronous exception when it runs in
another thread (a Dask worker). Both stop Python code, and the timer also stops blocking
calls such as ``time.sleep``. A run that does not stop when asked (it swallows every
exception, or never returns from C code) has its worker process ended at
:func:`hard_time_limit` (local workers, where plug-ins always run; see
:mod:`l2lbench.execute.parallel`), and its runs are recorded as failed all the same.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from l2lbench.errors import PLUGIN_FAULTS, L2LBenchError, UsageError, describe_fault
from l2lbench.execute.isolation import CheckedOptimizer
from l2lbench.execute.learner import FunctionalLearner
from l2lbench.execute.metatest import PreparedData, SeedOutcome, execution_mode, run_seeds
from l2lbench.execute.metatrained import build_for_meta_test
from l2lbench.execute.parallel import Executor, WorkerLost, run_threads
from l2lbench.execute.portable import PortableOptimizer, unresolvable
from l2lbench.execute.timeouts import RunTimeout, time_limit, timeout_reason
from l2lbench.fastpath.native.build import start_recording as start_native_recording
from l2lbench.fastpath.native.build import status as native_status
from l2lbench.plan.runs import RunJob
from l2lbench.plugin.base import capability
from l2lbench.spec.task import TaskSpec
from l2lbench.store.provenance import provenance
from l2lbench.store.runs import ResultsStore, RunRecord


@dataclass
class RunSummary:
    planned: int = 0
    skipped: int = 0
    ok: int = 0
    diverged: int = 0
    failed: list[str] = field(default_factory=list)  # one line per failed run


@functools.lru_cache(maxsize=1)
def _warm_up() -> None:
    """Import what torch.func imports on first use (a second or more), so that it is not
    counted against, or cut short by, the first run's time limit."""
    from torch.func import grad_and_value, vmap

    vmap(grad_and_value(lambda v: (v * v).sum()), randomness="error")(torch.zeros(2, 1))


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
        if learner.slow_path_reason is not None:  # its seeds batch under vmap, slower: say so in the record
            info["learner_slow_path"] = learner.slow_path_reason
        with time_limit(run_timeout):
            optimizer, meta_training = build_for_meta_test(job.optimizer, device)
        optimizer = CheckedOptimizer(optimizer, job.optimizer.name)
        if meta_training is not None:
            info["meta_training"] = meta_training
    except RunTimeout:
        reason = f"{timeout_reason(run_timeout)} (building the optimizer)"
        return [_failed(job, seed, reason, info) for seed in job.seeds]
    except L2LBenchError as exc:
        return [_failed(job, seed, str(exc), info) for seed in job.seeds]
    except PLUGIN_FAULTS as exc:
        return [_failed(job, seed, describe_fault(exc), info, traceback.format_exc()) for seed in job.seeds]

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
        except PLUGIN_FAULTS as exc:
            # Not every plug-in that claims to be batchable survives vmap; the seeds
            # then run one by one through the same step function.
            info = {**info, "execution": f"per seed (batched run failed: {describe_fault(exc)})"}
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
        except PLUGIN_FAULTS as exc:
            records.append(_failed(job, seed, describe_fault(exc), info, traceback.format_exc()))
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
    except (L2LBenchError, *PLUGIN_FAULTS) as exc:
        return unresolvable(optimizer, plugins, exc)
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

