"""Meta-training (Kuo et al. 2020, Algorithm 1; Andrychowicz et al. 2016): one
implementation for every learned plug-in.

For each of Q trials a freshly initialised learner is trained for S steps by the learned
optimiser; after every truncation of Xi steps (``unroll``) the meta-gradient of that
truncation's learner losses is estimated, clamped, and Adam takes one step on the
meta-parameters. The spec's ``estimator`` says how the meta-gradient is estimated:
truncated back-propagation through time (``"tbptt"``, the papers'), antithetic evolution
strategies (``"es"``) or persistent evolution strategies (``"pes"``); each is described,
with its bias and cost, in :mod:`l2lbench.execute.estimators`, which yields the estimates.

With TBPTT the learner's gradients are treated as data (``torch.autograd.grad`` without
``create_graph``): the meta-gradient flows through ``theta_{t+1} = update(theta_t, ...)``
into later losses only, with no second-order terms, as in both papers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from l2lbench.execute.estimators import TaskData, prepare_task, runs_per_step, truncations
from l2lbench.fastpath.meta_adam import MetaAdam
from l2lbench.spec.hashing import derive_seed
from l2lbench.spec.metatraining import MetaTrainingSpec
from l2lbench.spec.task import TaskSpec


@dataclass
class MetaTrainingResult:
    """The trained meta-parameters and what happened on the way."""

    module: torch.nn.Module
    trial_loss: list[float] = field(default_factory=list)  # mean learner loss of each trial
    unroll_loss: list[float] = field(default_factory=list)  # mean learner loss of each unroll
    wall_time_s: float = 0.0
    learner_steps: int = 0


def meta_train(
    optimizer: Any,
    spec: MetaTrainingSpec,
    *,
    data_dir: Path,
    device: torch.device,
    progress: bool | None = None,
    on_unroll: Callable[[int, int, float], None] | None = None,
) -> MetaTrainingResult:
    """Meta-train the learned plug-in ``optimizer`` as ``spec`` says.

    Args:
        optimizer: an unbound learned plug-in (``init_meta``/``with_meta``/``init``/``update``).
        spec: tasks, trials, unroll, meta learning rate, clipping, noise, seed, estimator.
        data_dir: where the tasks' datasets are.
        device: where to train.
        progress: show a progress bar (``None``: only when stderr is a terminal).
        on_unroll: called as ``on_unroll(trial, step, mean_loss)`` after each meta-update.

    Returns:
        The meta-parameters (in ``eval`` mode, on the CPU) and the loss history.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    module = optimizer.init_meta(generator=torch.Generator().manual_seed(derive_seed(spec.seed_hash, "meta-init")))
    module.to(device).train()
    bound = optimizer.with_meta(module)
    meta_optimizer = MetaAdam(module, spec.lr)
    prepared: dict[TaskSpec, TaskData] = {}
    result = MetaTrainingResult(module)
    total = sum(spec.tasks[q % len(spec.tasks)].steps for q in range(spec.trials)) * runs_per_step(spec)
    bar = tqdm(total=total, unit="step", desc="meta-training", disable=None if progress is None else not progress, leave=False)
    try:
        for trial in range(spec.trials):
            task = spec.tasks[trial % len(spec.tasks)]
            if task not in prepared:
                prepared[task] = prepare_task(task, data_dir, device)
            losses = _trial(bound, module, meta_optimizer, spec, task, prepared[task], trial, device, result, bar, on_unroll)
            result.trial_loss.append(sum(losses) / len(losses))
            bar.set_postfix(trial=f"{trial + 1}/{spec.trials}", meta_loss=f"{result.trial_loss[-1]:.4f}")
    finally:
        bar.close()
    module.eval().cpu()
    result.wall_time_s = time.perf_counter() - start
    return result


def _trial(
    bound: Any,
    module: torch.nn.Module,
    meta_optimizer: MetaAdam,
    spec: MetaTrainingSpec,
    task: TaskSpec,
    prepared: TaskData,
    trial: int,
    device: torch.device,
    result: MetaTrainingResult,
    bar: Any,
    on_unroll: Callable[[int, int, float], None] | None,
) -> list[float]:
    """One trial, a meta-update after every truncation; returns the learner's losses."""
    losses: list[float] = []
    params = dict(module.named_parameters())
    for estimate in truncations(bound, module, spec, task, prepared, trial, device):
        meta_optimizer.zero_grad()
        for name, gradient in estimate.gradient.items():
            params[name].grad = gradient
        for p in module.parameters():
            if p.grad is not None:
                p.grad.clamp_(-spec.clip, spec.clip)
        meta_optimizer.step()
        losses += estimate.losses
        result.unroll_loss.append(sum(estimate.terms) / len(estimate.terms))
        result.learner_steps += estimate.learner_steps
        bar.update(estimate.learner_steps)
        if on_unroll is not None:
            on_unroll(trial, estimate.step, result.unroll_loss[-1])
    return losses
