"""Meta-training (Kuo et al. 2020, Algorithm 1; Andrychowicz et al. 2016): one
implementation for every learned plug-in.

For each of Q trials a freshly initialised learner is trained for S steps by the learned
optimiser; every Xi steps the summed learner losses of that unroll (Eq. 4) are
back-propagated into the meta-parameters, the meta-gradients are clamped and Adam takes
one step; the learner parameters and the optimiser's per-run state then carry over to the
next unroll, detached (truncated back-propagation through time).

The learner's gradients are treated as data (``torch.autograd.grad`` without
``create_graph``): the meta-gradient flows through ``theta_{t+1} = update(theta_t, ...)``
into later losses only, with no second-order terms, as in both papers.

The loss of step t is ``L(theta_t)`` on batch t. With the paper's meta-loss an unroll
starting at step s (where the parameters were detached) contributes ``L(theta_{s+1}) + ...
+ L(theta_{s+Xi})``: every term depends on the meta-parameters, and the loss that closes one
unroll also provides the gradient that starts the next, so no learner evaluation is
repeated. With the authors' (``meta_loss = "authors"``) the terms are ``L(theta_{t+1}; b_t)``,
the updated learner on the batch that gave its gradient: one more learner evaluation per
step. Either meta-gradient is back-propagated from ``sum <g, theta>`` with the learner
gradients ``g`` of those losses held constant, which has the same gradient.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..hashing import derive_seed
from ..learner import FunctionalLearner
from ..optim.base import Params, StepContext
from ..optim.tree import tree_map
from ..task import TaskSpec
from ..metatest import Layout, batch_schedule, minibatch
from .spec import MetaTrainingSpec


@dataclass
class MetaTrainingResult:
    """The trained meta-parameters and what happened on the way."""

    module: torch.nn.Module
    trial_loss: list[float] = field(default_factory=list)  # mean learner loss of each trial
    unroll_loss: list[float] = field(default_factory=list)  # mean learner loss of each unroll
    wall_time_s: float = 0.0
    learner_steps: int = 0


class MetaAdam:
    """Adam on the meta-parameters, updated in place: the functional Adam of
    ``optimizers/adam.py`` (``torch.optim.Adam``'s formulas), one state per parameter, a
    parameter without a gradient left alone, as ``torch.optim.Adam`` does.

    Not ``torch.optim.Adam`` itself: constructing any ``torch.optim`` optimiser imports
    ``torch._dynamo`` and sympy, 153 MB of resident memory in every meta-training process
    (a third of what meta-training the paper's LSTM optimiser with unroll 20 needs).
    """

    def __init__(self, module: torch.nn.Module, lr: float) -> None:
        from ..optimizers.adam import Adam

        self.rule = Adam(lr=lr)
        self.params = dict(module.named_parameters())
        self.states = {name: self.rule.init({name: p.detach()}) for name, p in self.params.items()}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        # The parameters whose states have taken equally many steps (all of them, unless
        # some went without a gradient) go through one update call: Adam's per-call work
        # (bias corrections) once, not once per parameter (MTL2L: 1.3 -> 0.9 ms).
        cohorts: dict[int, list[str]] = {}
        for name, p in self.params.items():
            if p.grad is not None:
                cohorts.setdefault(int(self.states[name].count), []).append(name)
        for names in cohorts.values():
            first = self.states[names[0]]
            merged = first._replace(**{
                key: {name: getattr(self.states[name], key)[name] for name in names}
                for key, value in first._asdict().items() if isinstance(value, dict) and value
            })
            grads = {name: self.params[name].grad for name in names}
            new, state = self.rule.update(grads, merged, {name: self.params[name].detach() for name in names}, StepContext(step=0))
            for name in names:
                self.params[name].copy_(new[name])
                self.states[name] = state._replace(**{
                    key: {name: value[name]} for key, value in state._asdict().items() if isinstance(value, dict) and value
                })


@dataclass
class _TaskData:
    """A training task's learner and its training split on the device (meta-training never
    reads the test split, so it is neither normalised nor kept)."""

    learner: FunctionalLearner
    train_images: Tensor  # (N, C, H, W) uint8
    train_labels: Tensor
    mean: float
    std: float


def _prepare(task: TaskSpec, data_dir: Path, device: torch.device) -> _TaskData:
    learner = FunctionalLearner(task.learner.build(task.dataset.input_shape, task.dataset.num_classes))
    splits = task.dataset.load(data_dir)
    return _TaskData(learner, splits.train_images.to(device), splits.train_labels.to(device), splits.mean, splits.std)


def _detached(tree: Any) -> Any:
    return tree_map(lambda v: v.detach() if isinstance(v, Tensor) else v, tree)


def _add_noise(params: Params, step: int, horizon: int, spec: MetaTrainingSpec, generator: torch.Generator) -> Params:
    """Appendix B.5.3: N(0,1) * max|theta| * (S - t)/S * a scale picked at random, per tensor."""
    pick = int(torch.randint(len(spec.noise_scales), (1,), generator=generator))
    decay = (horizon - step) / horizon * spec.noise_scales[pick]
    noisy = {}
    for name, p in params.items():
        scale = p.detach().abs().max() * decay
        noise = torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
        noisy[name] = p + scale * noise
    return noisy


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
        spec: tasks, trials, unroll, meta learning rate, clipping, noise, seed.
        data_dir: where the tasks' datasets are.
        device: where to train.
        progress: show a progress bar (``None``: only when stderr is a terminal).
        on_unroll: called as ``on_unroll(trial, step, mean_loss)`` after each meta-update.

    Returns:
        The meta-parameters (in ``eval`` mode, on the CPU) and the loss history.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    module = optimizer.init_meta(generator=torch.Generator().manual_seed(derive_seed(spec.hash, "meta-init")))
    module.to(device).train()
    bound = optimizer.with_meta(module)
    meta_optimizer = MetaAdam(module, spec.lr)
    prepared: dict[TaskSpec, _TaskData] = {}
    result = MetaTrainingResult(module)
    total = sum(spec.tasks[q % len(spec.tasks)].steps for q in range(spec.trials))
    bar = tqdm(total=total, unit="step", desc="meta-training", disable=None if progress is None else not progress, leave=False)
    try:
        for trial in range(spec.trials):
            task = spec.tasks[trial % len(spec.tasks)]
            if task not in prepared:
                prepared[task] = _prepare(task, data_dir, device)
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
    prepared: _TaskData,
    trial: int,
    device: torch.device,
    result: MetaTrainingResult,
    bar: Any,
    on_unroll: Callable[[int, int, float], None] | None,
) -> list[float]:
    """One learner, S steps, a meta-update every Xi steps; returns the learner's losses."""
    learner, data = prepared.learner, prepared
    horizon = task.steps
    init_generator = torch.Generator().manual_seed(derive_seed(spec.hash, trial, "init"))
    first = learner.init(init_generator, device)
    # A coordinatewise optimiser gets one flat vector (as at meta-test), the learner views of it.
    layout = Layout.for_optimizer(bound, first, stacked=False)
    params = {k: v.requires_grad_(True) for k, v in layout.pack(first).items()}
    generator = torch.Generator(device=device).manual_seed(derive_seed(spec.hash, trial, "optimizer"))
    state = bound.init(params, generator=generator)
    # S + 1 batches: the loss after the last update closes the last unroll.
    schedule = batch_schedule(len(data.train_labels), horizon + 1, task.batch_size, derive_seed(spec.hash, trial, "data")).to(device)
    same_batch = spec.meta_loss == "authors"
    meta_objective: Tensor | None = None
    unroll_start, losses, terms = 0, [], []

    def add_term(loss: Tensor, grads: Params) -> None:
        # The meta-gradient of L(theta) is <dL/dtheta, dtheta/dphi>, and dL/dtheta is a
        # learner gradient already computed: back-propagating <grads, theta> (grads held
        # constant) gives the same meta-gradient as L itself, without a second pass through
        # the learner or keeping its graph.
        nonlocal meta_objective
        term = sum((g * theta).sum() for g, theta in zip(grads.values(), params.values()))
        meta_objective = term if meta_objective is None else meta_objective + term
        terms.append(loss.item())

    def close_unroll(t: int) -> None:
        # One meta-update, then the learner and the optimiser's state carry on, detached.
        nonlocal meta_objective, unroll_start, params, state, terms
        meta_optimizer.zero_grad()
        meta_objective.backward()
        for p in module.parameters():
            if p.grad is not None:
                p.grad.clamp_(-spec.clip, spec.clip)
        meta_optimizer.step()
        result.unroll_loss.append(sum(terms) / len(terms))
        if on_unroll is not None:
            on_unroll(trial, t, result.unroll_loss[-1])
        params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        state = _detached(state)
        meta_objective, unroll_start, terms = None, t, []

    def learner_gradient(inputs: Tensor, labels: Tensor) -> tuple[Tensor, Params]:
        loss = learner.loss(layout.unpack(params), inputs, labels)
        return loss, dict(zip(params, torch.autograd.grad(loss, list(params.values()))))

    for t in range(horizon + 1):
        inputs, labels = minibatch(data.train_images, data.train_labels, schedule[t], data.mean, data.std)
        loss, grads = learner_gradient(inputs, labels)
        losses.append(loss.item())
        if not same_batch and t > unroll_start:  # paper: L(theta_t; b_t), the loss that drives step t
            add_term(loss, grads)
            if t - unroll_start == spec.unroll or t == horizon:
                close_unroll(t)
        if t == horizon:
            break
        context = StepContext(step=t, inputs=inputs, loss=loss.detach(), generator=generator, horizon=horizon)
        params, state = bound.update(grads, state, params, context)
        if spec.param_noise:
            params = layout.pack(_add_noise(layout.unpack(params), t, horizon, spec, generator))
        result.learner_steps += 1
        bar.update(1)
        if same_batch:  # authors: L(theta_{t+1}; b_t), the updated learner on the batch it saw
            add_term(*learner_gradient(inputs, labels))
            if t + 1 - unroll_start == spec.unroll or t + 1 == horizon:
                close_unroll(t + 1)
    return losses
