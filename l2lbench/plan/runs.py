"""Plan a suite: the (task, optimiser) pairs it covers and the runs not yet stored.

A *job* is one (task, optimiser) pair and the seeds still missing for it. Planning builds
each plug-in once to validate its hyperparameters (a bad value stops the command before
anything runs) and names where its numbers will be computed (:func:`numerics`), which is
part of its key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from l2lbench.errors import PLUGIN_FAULTS, ConfigError, UsageError
from l2lbench import fastpath
from l2lbench.fastpath.native.build import load as native_load
from l2lbench.plugin.registry import OptimizerRegistry, ResolvedOptimizer
from l2lbench.spec.optimizer import OptimizerSpec
from l2lbench.spec.suite import Suite
from l2lbench.spec.task import TaskSpec
from l2lbench.store.runs import ResultsStore


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
                                  is_learned(optimizer))
        optimizer, learned = resolved[id(spec)]
        trainings = suite.meta_trainings_for(spec, task) if learned else []
        pairs += [(task, dataclasses.replace(optimizer, meta_training=t)) for t in trainings] or [(task, optimizer)]
    return pairs


def check_batches(pairs: Iterable[tuple[TaskSpec, ResolvedOptimizer]], loaded: Mapping[Any, Any]) -> None:
    """Refuse, before anything runs, a task (or meta-training task) whose minibatch is
    larger than its dataset's training split."""
    tasks = {t for t, _ in pairs} | {t for _, o in pairs if o.meta_training is not None for t in o.meta_training.tasks}
    for task in sorted(tasks, key=lambda t: t.name):
        available = len(loaded[task.dataset].train_images)
        if task.batch_size > available:
            raise UsageError(f"task {task.name}: batch_size {task.batch_size} is larger than its training split "
                             f"of {available} images (expected at most {available})")


def numerics(optimizer: ResolvedOptimizer, device: torch.device) -> str:
    """Where an optimiser's numbers are computed, as far as that changes their rounding:
    the device type and, for a learned optimiser on a CPU, whether its LSTM runs in the C
    kernels (``+native``) or in PyTorch operations (``+pytorch``: ``L2LBENCH_NATIVE=0``, no
    compiler). The two forms agree to float rounding only, which meta-training amplifies
    into another optimiser, so they are keyed apart. (Thread counts are fixed instead:
    :data:`l2lbench.execute.parallel.RUN_THREADS`.) With every fast path off
    (``L2LBENCH_FASTPATH=0``) every optimiser runs the plain references, another rounding
    again: ``+reference``."""
    if not fastpath.enabled():
        return f"{device.type}+reference"
    if device.type != "cpu" or not is_learned(optimizer):
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
    except PLUGIN_FAULTS:
        pass
    return optimizer


def is_learned(optimizer: ResolvedOptimizer) -> bool:
    try:
        return optimizer.learned
    except PLUGIN_FAULTS:  # a plug-in that fails to construct is recorded as failed runs later
        return False

