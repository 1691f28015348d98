"""Run a suite: plan the missing (task, optimiser, seed) runs, execute them, store them.

A *job* is one (task, optimiser) pair and the seeds still missing for it; its seeds run
batched when the optimiser allows. Every job's runs are written in one transaction as
soon as the job ends, so an interrupted suite keeps everything finished before the
interruption and a re-run computes only what is missing. A plug-in that raises is
recorded as failed runs (with its message) and the suite goes on.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .errors import L2LBenchError, UsageError
from .learned.cache import build_for_meta_test, ensure_meta_trained
from .learner import FunctionalLearner
from .optim.base import capability
from .optim.registry import OptimizerRegistry, ResolvedOptimizer
from .optim.spec import OptimizerSpec
from .parallel import Executor, worker_registry
from .provenance import provenance
from .store import ResultsStore, RunRecord
from .suite import Suite
from .task import TaskSpec
from .training import PreparedData, SeedOutcome, run_seeds


@dataclass(frozen=True)
class RunJob:
    task: TaskSpec
    optimizer: ResolvedOptimizer
    seeds: tuple[int, ...]

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
    pairs: Iterable[tuple[TaskSpec, ResolvedOptimizer]], seeds: int, store: ResultsStore
) -> tuple[list[RunJob], int]:
    """Jobs for the runs not yet stored, and how many runs are already stored."""
    jobs, skipped = [], 0
    for task, optimizer in pairs:
        done = store.finished_seeds(task.hash, optimizer.hash)
        missing = tuple(s for s in range(seeds) if s not in done)
        skipped += seeds - len(missing)
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

    @classmethod
    def of(cls, optimizer: ResolvedOptimizer) -> "PortableOptimizer":
        return cls(optimizer.spec, optimizer.meta_training, optimizer.checkpoint, optimizer.checkpoint_digest)

    def resolve(self, plugins: tuple[str, ...]) -> ResolvedOptimizer:
        resolved = worker_registry(plugins).resolve(self.spec)
        return dataclasses.replace(
            resolved, meta_training=self.meta_training, checkpoint=self.checkpoint, checkpoint_digest=self.checkpoint_digest
        )


def with_meta_training(
    jobs: list[RunJob],
    *,
    results_dir: Path,
    data_dir: Path,
    device: torch.device,
    executor: Executor = Executor(),
    plugins: tuple[str, ...] = (),
    log: Callable[[str], None] = lambda message: None,
) -> list[RunJob]:
    """Meta-train (or fetch from the cache) every learned optimiser the jobs need, once,
    before any meta-test (in parallel when the executor has workers); the jobs come back
    pointing at the checkpoints."""
    needed: dict[str, ResolvedOptimizer] = {}
    for job in jobs:
        if job.optimizer.hash not in needed and job.optimizer.checkpoint is None and _is_learned(job.optimizer):
            needed[job.optimizer.hash] = job.optimizer
    ready: dict[str, ResolvedOptimizer] = {}
    if executor.in_process:
        for key, optimizer in needed.items():
            ready[key] = ensure_meta_trained(optimizer, results_dir=results_dir, data_dir=data_dir, device=device, log=log)
    else:
        items = [(key, PortableOptimizer.of(o)) for key, o in needed.items()]
        for (key, _), (path, lines) in executor.map(_meta_train_in_worker, items, plugins, results_dir, data_dir, str(device)):
            for line in lines:
                log(line)
            ready[key] = dataclasses.replace(needed[key], checkpoint=path)
    return [dataclasses.replace(job, optimizer=ready.get(job.optimizer.hash, job.optimizer)) for job in jobs]


def _meta_train_in_worker(
    item: tuple[str, PortableOptimizer], plugins: tuple[str, ...], results_dir: Path, data_dir: Path, device: str
) -> tuple[Path, list[str]]:
    lines: list[str] = []
    optimizer = item[1].resolve(plugins)
    ready = ensure_meta_trained(
        optimizer, results_dir=results_dir, data_dir=data_dir, device=torch.device(device), progress=False, log=lines.append
    )
    return ready.checkpoint, lines


def execute_job(job: RunJob, *, data_dir: Path, device: torch.device, vectorize: bool = True) -> list[RunRecord]:
    """Run one job; never raises for a plug-in's fault (that becomes failed records)."""
    info = provenance(device)
    try:
        splits = job.task.dataset.load(data_dir)
        data = PreparedData.from_splits(splits, job.task, device)
        learner = FunctionalLearner(job.task.learner.build(job.task.dataset.input_shape, job.task.dataset.num_classes))
        optimizer, meta_training = build_for_meta_test(job.optimizer, device)
        if meta_training is not None:
            info["meta_training"] = meta_training
    except L2LBenchError as exc:
        return [_failed(job, seed, str(exc), info) for seed in job.seeds]
    except Exception as exc:
        return [_failed(job, seed, _describe(exc), info, traceback.format_exc()) for seed in job.seeds]

    records: list[RunRecord] = []
    remaining = list(job.seeds)
    if vectorize and len(remaining) > 1 and capability(optimizer, "batchable"):
        start = time.perf_counter()
        try:
            outcomes = run_seeds(job.task, optimizer, learner, data, remaining, device=device, vectorize=True)
        except Exception as exc:
            # Not every plug-in that claims to be batchable survives vmap; the seeds
            # then run one by one through the same step function.
            info = {**info, "execution": f"per seed (batched run failed: {_describe(exc)})"}
        else:
            per_run = (time.perf_counter() - start) / len(outcomes)
            info = {**info, "execution": f"vmap over {len(outcomes)} seeds"}
            return [_record(job, o, per_run, info) for o in outcomes]
    info.setdefault("execution", "per seed")
    for seed in remaining:
        start = time.perf_counter()
        try:
            (outcome,) = run_seeds(job.task, optimizer, learner, data, [seed], device=device, vectorize=False)
        except Exception as exc:
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
) -> RunSummary:
    """Execute ``jobs`` (in parallel when the executor has workers), storing each job's
    runs in one transaction as soon as it ends, in this process only."""
    summary = RunSummary(planned=sum(len(j.seeds) for j in jobs))
    if executor.in_process:
        results = ((job, execute_job(job, data_dir=data_dir, device=device, vectorize=vectorize)) for job in jobs)
    else:
        portable = [(i, PortableOptimizer.of(job.optimizer), job.task, job.seeds) for i, job in enumerate(jobs)]
        results = (
            (jobs[item[0]], records)
            for item, records in executor.map(_execute_in_worker, portable, plugins, data_dir, str(device), vectorize)
        )
    for job, records in results:
        store.put(records)
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
) -> list[RunRecord]:
    _, optimizer, task, seeds = item
    job = RunJob(task, optimizer.resolve(plugins), seeds)
    return execute_job(job, data_dir=data_dir, device=torch.device(device), vectorize=vectorize)


def suite_runs(
    suite: Suite,
    registry: OptimizerRegistry,
    *,
    task_patterns: list[str] | None = None,
    optimizer_names: list[str] | None = None,
) -> list[tuple[TaskSpec, ResolvedOptimizer]]:
    """The (task, resolved optimiser) pairs a ``run`` of ``suite`` covers.

    Names not in the suite are registry entries with default hyperparameters; learned
    optimisers get the suite's meta-training for each task.
    """
    specs = None
    if optimizer_names:
        known = {o.name for o in suite.optimizers}
        specs = [o for o in suite.optimizers if o.name in optimizer_names]
        specs += [OptimizerSpec(n) for n in optimizer_names if n not in known]
    resolved: dict[int, ResolvedOptimizer] = {}
    pairs = []
    for task, spec in suite.pairs(task_patterns, specs):
        if id(spec) not in resolved:
            resolved[id(spec)] = registry.resolve(spec)
        optimizer = resolved[id(spec)]
        if _is_learned(optimizer):
            optimizer = dataclasses.replace(optimizer, meta_training=suite.meta_training_for(spec, task))
        pairs.append((task, optimizer))
    return pairs


def _is_learned(optimizer: ResolvedOptimizer) -> bool:
    try:
        return optimizer.learned
    except Exception:  # a plug-in that fails to construct is recorded as failed runs later
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
    return RunRecord(
        **_base(job, outcome.seed, info),
        status="diverged" if outcome.diverged_step is not None else "ok",
        diverged_step=outcome.diverged_step,
        train_loss=outcome.train_loss,
        eval_steps=outcome.eval_steps,
        test_loss=outcome.test_loss,
        test_accuracy=outcome.test_accuracy,
        wall_time_s=wall_time,
    )


def _failed(job: RunJob, seed: int, message: str, info: dict, trace: str | None = None) -> RunRecord:
    info = {**info, "traceback": trace} if trace else info
    return RunRecord(**_base(job, seed, info), status="failed", error=message)
