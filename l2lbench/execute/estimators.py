"""Meta-gradient estimators: one estimate of the meta-gradient per truncation of a trial.

A trial (:mod:`l2lbench.execute.metatrain`) trains a freshly initialised learner for S
steps with the learned optimiser and updates the meta-parameters phi after every
truncation of ``unroll`` (K) steps. The meta-objective is the learner's mean loss over the
whole run; a truncation's share of it is the losses of its K steps (``meta_loss`` says
which loss of a step: :class:`~l2lbench.spec.metatraining.MetaTrainingSpec`). How each
truncation's meta-gradient is estimated is the spec's ``estimator``:

``tbptt``, truncated back-propagation through time (Algorithm 1 of Kuo et al. 2020;
Andrychowicz et al. 2016). One learner; the truncation's losses are back-propagated into
phi through the K updates, the learner's gradients held as data (first order: no
second-order terms), then the learner and the optimiser's state carry on, detached.
*Bias*: every truncation takes its starting learner and state as given, so the estimate
misses how phi shaped them in earlier truncations: it favours what pays off within K steps
(the short-horizon bias that lets a meta-trained optimiser climb after its horizon), and
drops the learner's curvature. With K = S it is the first-order gradient of the whole run.
*Cost* per meta-update: K learner steps plus one backward pass through them; memory: the
graph of K learner and optimiser steps. Its gradient is that of the *sum* of the K losses
(Eq. 4), as it always was, which differs from the mean's by the factor K (only the clamp
sees the difference: Adam does not).

``es``, antithetic evolution strategies on each truncation. From the truncation's starting
learner (state, batches and random draws shared by every run), N pairs of runs with
``phi + eps_i`` and ``phi - eps_i``, ``eps_i ~ N(0, sigma^2 I)``; the estimate is
``sum_i eps_i (L+_i - L-_i) / (2 N sigma^2)``, L the truncation's mean loss; then one
run with phi itself carries the learner on to the next truncation (and gives the curve).
*Bias*: unbiased for the gradient of the Gaussian-smoothed truncated objective, so biased
like TBPTT (the starting state is taken as given), but not first order; its variance
grows with the number of meta-parameters, over N. *Cost*: (2N + 1) K learner steps,
without back-propagation (the optimiser runs in its fast no-grad form); memory: two
learners with their optimiser states, no graph.

``pes``, persistent evolution strategies (Vicol et al. 2021). 2N particles, in antithetic
pairs, each with its own learner and optimiser state through the whole trial; every
truncation draws a fresh ``eps_i`` per pair (``+eps_i`` for one particle, ``-eps_i`` for
its twin) and adds it to the pair's accumulator ``xi_i`` (zero at the start of a trial);
the estimate is ``sum_i xi_i (L+_i - L-_i) / (2 N sigma^2)``. *Bias*: with phi held fixed
over a trial the accumulator accounts for how every earlier perturbation shaped the
particles' state, so the estimates of a trial's truncations are unbiased for the gradient
of the smoothed whole-run objective (to the extent the meta-updates between truncations
move phi, the particles lag behind it). The price is variance that grows with the
truncations done, as ``xi`` does. *Cost*: 2N K learner steps per meta-update, no
back-propagation; memory: 2N learners with their optimiser states and N accumulators of
the meta-parameters' size.

ES and PES write the perturbed meta-parameters into the module and restore them
afterwards, so every learned plug-in runs its ordinary no-grad (meta-test) update.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from l2lbench.execute.learner import FunctionalLearner
from l2lbench.execute.metatest import batch_schedule, minibatch
from l2lbench.fastpath.seeds import Layout
from l2lbench.plugin.base import Params, StepContext
from l2lbench.plugin.tree import tree_map
from l2lbench.spec.hashing import derive_seed
from l2lbench.spec.metatraining import MetaTrainingSpec
from l2lbench.spec.task import TaskSpec


@dataclass
class TaskData:
    """A training task's learner and its training split on the device (meta-training never
    reads the test split, so it is neither normalised nor kept)."""

    learner: FunctionalLearner
    train_images: Tensor  # (N, C, H, W) uint8
    train_labels: Tensor
    mean: float
    std: float


def prepare_task(task: TaskSpec, data_dir: Path, device: torch.device) -> TaskData:
    learner = FunctionalLearner(task.learner.build(task.dataset.input_shape, task.dataset.num_classes))
    splits = task.dataset.load(data_dir)
    return TaskData(learner, splits.train_images.to(device), splits.train_labels.to(device), splits.mean, splits.std)


@dataclass
class Estimate:
    """One truncation's meta-gradient estimate and what its learners did."""

    gradient: dict[str, Tensor]  # by meta-parameter name; TBPTT omits those the losses do not reach
    terms: list[float]  # the truncation's meta-objective terms (PES: the particles' mean)
    losses: list[float]  # L(theta_t; b_t) first evaluated in this truncation, for the trial's curve
    step: int  # the learner step the truncation ends at
    learner_steps: int  # learner updates taken, every particle's counted


def runs_per_step(spec: MetaTrainingSpec) -> int:
    """Learner runs one step of a trial costs: 1 (TBPTT), 2N + 1 (ES), 2N (PES)."""
    return {"tbptt": 1, "es": 2 * spec.particles + 1, "pes": 2 * spec.particles}[spec.estimator]


def truncations(
    optimizer: Any,
    module: torch.nn.Module,
    spec: MetaTrainingSpec,
    task: TaskSpec,
    data: TaskData,
    trial: int,
    device: torch.device,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[Estimate]:
    """Run trial ``trial`` of ``spec`` on ``task``, yielding each truncation's estimate.

    Each estimate is taken at the meta-parameters ``module`` holds when its truncation
    starts; nothing here steps them (meta-training does, between yields).

    Args:
        optimizer: the learned plug-in bound to ``module``.
        module: its meta-parameters (those with ``requires_grad`` are estimated).
        data: the task's prepared training data.
        trial: the trial index, which seeds the learner, its batches and random draws.
        generator: ES/PES perturbations (CPU); ``None``: seeded by the spec and trial.
    """
    run = _Trial(optimizer, spec, task, data, trial, device)
    if spec.estimator == "tbptt":
        yield from _tbptt(run, module)
        return
    if generator is None:
        generator = torch.Generator().manual_seed(derive_seed(spec.hash, trial, "perturbation"))
    yield from (_es if spec.estimator == "es" else _pes)(run, module, generator)


def add_noise(params: Params, step: int, horizon: int, spec: MetaTrainingSpec, generator: torch.Generator) -> Params:
    """Appendix B.5.3: N(0,1) * max|theta| * (S - t)/S * a scale picked at random, per tensor."""
    pick = int(torch.randint(len(spec.noise_scales), (1,), generator=generator))
    decay = (horizon - step) / horizon * spec.noise_scales[pick]
    noisy = {}
    for name, p in params.items():
        scale = p.detach().abs().max() * decay
        noise = torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
        noisy[name] = p + scale * noise
    return noisy


def _detached(tree: Any) -> Any:
    return tree_map(lambda v: v.detach() if isinstance(v, Tensor) else v, tree)


def _cloned(tree: Any) -> Any:
    return tree_map(lambda v: v.detach().clone() if isinstance(v, Tensor) else v, tree)


def _clone_generator(generator: torch.Generator) -> torch.Generator:
    clone = torch.Generator(device=generator.device)
    clone.set_state(generator.get_state())
    return clone


@dataclass
class _Run:
    """One learner of a trial at step t, under no-grad estimators: its parameters (in the
    optimiser's layout), the optimiser's state and generator, and ``L(theta_t; b_t)`` with
    its learner gradient (the next update's input, computed when theta_t was)."""

    params: Params
    state: Any
    generator: torch.Generator
    loss: Tensor
    grads: Params

    def fork(self) -> _Run:
        """An independent copy: the same learner, state and random stream from here on (a
        plug-in may update its state in place)."""
        return _Run(_cloned(self.params), _cloned(self.state), _clone_generator(self.generator), self.loss,
                    _cloned(self.grads))


class _Trial:
    """What every learner of one trial shares: the initial parameters, the batches, the
    optimiser's random stream (each learner runs on a copy), and the learner step."""

    def __init__(self, optimizer: Any, spec: MetaTrainingSpec, task: TaskSpec, data: TaskData, trial: int,
                 device: torch.device) -> None:
        self.optimizer, self.spec, self.data, self.horizon = optimizer, spec, data, task.steps
        first = data.learner.init(torch.Generator().manual_seed(derive_seed(spec.seed_hash, trial, "init")), device)
        # A coordinatewise optimiser gets one flat vector (as at meta-test), the learner views of it.
        self.layout = Layout.for_optimizer(optimizer, first, stacked=False)
        self.first = self.layout.pack(first)
        self.generator = torch.Generator(device=device).manual_seed(derive_seed(spec.seed_hash, trial, "optimizer"))
        # S + 1 batches: the loss after the last update closes the last truncation.
        self.schedule = batch_schedule(len(data.train_labels), self.horizon + 1, task.batch_size,
                                       derive_seed(spec.seed_hash, trial, "data")).to(device)

    def batch(self, t: int) -> tuple[Tensor, Tensor]:
        return minibatch(self.data.train_images, self.data.train_labels, self.schedule[t], self.data.mean, self.data.std)

    def loss(self, params: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
        return self.data.learner.loss(self.layout.unpack(params), *batch)

    def bounds(self) -> Iterator[tuple[int, int]]:
        """The truncations ``[start, end)`` of the trial's steps: K each, the last shorter."""
        for start in range(0, self.horizon, self.spec.unroll):
            yield start, min(start + self.spec.unroll, self.horizon)

    # --- no-grad learners (ES, PES) ---

    def gradient(self, params: Params, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Params]:
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            loss = self.loss(leaves, batch)
            grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        return loss.detach(), grads

    def start(self) -> _Run:
        params = _cloned(self.first)
        generator = _clone_generator(self.generator)
        state = self.optimizer.init(params, generator=generator)
        loss, grads = self.gradient(params, self.batch(0))
        return _Run(params, state, generator, loss, grads)

    @torch.no_grad()
    def advance(self, run: _Run, start: int, end: int,
                batches: dict[int, tuple[Tensor, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
        """Steps ``start .. end - 1`` of ``run`` (in place) with the meta-parameters the module
        holds now; returns the meta-objective's terms and the losses ``L(theta_t; b_t)``
        for t = start + 1 .. end."""
        terms, losses = [], []
        for t in range(start, end):
            context = StepContext(step=t, inputs=batches[t][0], loss=run.loss, generator=run.generator,
                                  horizon=self.horizon)
            params, run.state = self.optimizer.update(run.grads, run.state, run.params, context)
            if self.spec.param_noise:
                noisy = add_noise(self.layout.unpack(params), t, self.horizon, self.spec, run.generator)
                params = self.layout.pack(noisy)
            run.params = params
            if self.spec.meta_loss == "authors":  # L(theta_{t+1}; b_t)
                terms.append(self.loss(params, batches[t]))
            run.loss, run.grads = self.gradient(params, batches[t + 1])
            losses.append(run.loss)
            if self.spec.meta_loss != "authors":  # L(theta_{t+1}; b_{t+1})
                terms.append(run.loss)
        return terms, losses


def _meta_parameters(module: torch.nn.Module) -> dict[str, Tensor]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def _tbptt(trial: _Trial, module: torch.nn.Module) -> Iterator[Estimate]:
    """Truncated back-propagation through one learner.

    The loss of step t is ``L(theta_t)`` on batch t. With the paper's meta-loss a
    truncation starting at step s (where the parameters were detached) contributes
    ``L(theta_{s+1}) + ... + L(theta_{s+K})``: every term depends on the meta-parameters, and
    the loss that closes one truncation also provides the gradient that starts the next,
    so no learner evaluation is repeated. With the authors' the terms are
    ``L(theta_{t+1}; b_t)``, one more learner evaluation per step. Either meta-gradient is
    back-propagated from ``sum <g, theta>`` with the learner gradients ``g`` of those
    losses held constant, which has the same gradient: ``<dL/dtheta, dtheta/dphi>``, where
    dL/dtheta is a learner gradient already computed, so there is no second pass through
    the learner and its graph need not be kept.
    """
    spec, optimizer, layout, horizon = trial.spec, trial.optimizer, trial.layout, trial.horizon
    meta = _meta_parameters(module)
    same_batch = spec.meta_loss == "authors"
    generator = trial.generator
    params = {k: v.requires_grad_(True) for k, v in trial.first.items()}
    state = optimizer.init(params, generator=generator)
    objective: Tensor | None = None

    def learner_gradient(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Params]:
        loss = trial.loss(params, batch)
        return loss, dict(zip(params, torch.autograd.grad(loss, list(params.values()))))

    def add_term(loss: Tensor, grads: Params) -> None:
        nonlocal objective
        term = sum((g * theta).sum() for g, theta in zip(grads.values(), params.values()))
        objective = term if objective is None else objective + term
        terms.append(loss.item())

    batch = trial.batch(0)
    loss, grads = learner_gradient(batch)
    start, terms, losses, steps = 0, [], [loss.item()], 0
    for t in range(horizon):
        context = StepContext(step=t, inputs=batch[0], loss=loss.detach(), generator=generator, horizon=horizon)
        params, state = optimizer.update(grads, state, params, context)
        if spec.param_noise:
            params = layout.pack(add_noise(layout.unpack(params), t, horizon, spec, generator))
        steps += 1
        if same_batch:  # authors: L(theta_{t+1}; b_t), the updated learner on the batch it saw
            add_term(*learner_gradient(batch))
        batch = trial.batch(t + 1)
        loss, grads = learner_gradient(batch)
        losses.append(loss.item())
        if not same_batch:  # paper: L(theta_{t+1}; b_{t+1}), the loss that drives the next step
            add_term(loss, grads)
        if t + 1 - start == spec.unroll or t + 1 == horizon:
            found = torch.autograd.grad(objective, list(meta.values()), allow_unused=True)
            # Laid out as the parameter, as backward() would store it in .grad: autograd.grad
            # may hand back an expanded view, which in-place clamping cannot write to.
            gradient = {name: g if g.stride() == meta[name].stride() else torch.empty_like(meta[name]).copy_(g)
                        for name, g in zip(meta, found) if g is not None}
            yield Estimate(gradient, terms, losses, t + 1, steps)
            # The learner and the optimiser's state carry on, detached.
            params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            state = _detached(state)
            objective, start, terms, losses, steps = None, t + 1, [], [], 0


@contextmanager
def _shifted(meta: dict[str, Tensor], base: dict[str, Tensor], eps: dict[str, Tensor], sign: float) -> Iterator[None]:
    """The module's meta-parameters set to ``base + sign * eps`` inside, ``base`` after."""
    with torch.no_grad():
        for name, p in meta.items():
            torch.add(base[name], eps[name], alpha=sign, out=p)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in meta.items():
                p.copy_(base[name])


def _draw(meta: dict[str, Tensor], sigma: float, generator: torch.Generator) -> dict[str, Tensor]:
    """eps ~ N(0, sigma^2 I) over the meta-parameters, drawn on the CPU (the same on every device)."""
    return {name: (torch.randn(p.shape, generator=generator, dtype=p.dtype) * sigma).to(p.device) for name, p in meta.items()}


def _antithetic(trial: _Trial, meta: dict[str, Tensor], base: dict[str, Tensor], eps: dict[str, Tensor],
                pair: tuple[_Run, _Run], start: int, end: int,
                batches: dict) -> tuple[Tensor, list[tuple[list[Tensor], list[Tensor]]]]:
    """Run the pair (phi + eps, phi - eps) over ``[start, end)``: ``L+ - L-`` of their mean
    terms, and both runs' terms and losses."""
    outcome, runs = [], []
    for sign, run in zip((1.0, -1.0), pair):
        with _shifted(meta, base, eps, sign):
            terms, losses = trial.advance(run, start, end, batches)
        outcome.append(torch.stack(terms).mean())
        runs.append((terms, losses))
    return outcome[0] - outcome[1], runs


def _es(trial: _Trial, module: torch.nn.Module, generator: torch.Generator) -> Iterator[Estimate]:
    spec = trial.spec
    meta, n, sigma = _meta_parameters(module), spec.particles, spec.sigma
    central = trial.start()
    first_loss = [central.loss.item()]
    for start, end in trial.bounds():
        batches = {t: trial.batch(t) for t in range(start, end + 1)}
        base = {name: p.detach().clone() for name, p in meta.items()}
        gradient = {name: torch.zeros_like(p) for name, p in meta.items()}
        for _ in range(n):
            eps = _draw(meta, sigma, generator)
            difference, _ = _antithetic(trial, meta, base, eps, (central.fork(), central.fork()), start, end, batches)
            for name, g in gradient.items():
                g.add_(eps[name] * (difference / (2 * n * sigma**2)))
        terms, losses = trial.advance(central, start, end, batches)
        yield Estimate(gradient, torch.stack(terms).tolist(), first_loss + torch.stack(losses).tolist(), end,
                       (2 * n + 1) * (end - start))
        first_loss = []


def _pes(trial: _Trial, module: torch.nn.Module, generator: torch.Generator) -> Iterator[Estimate]:
    spec = trial.spec
    meta, n, sigma = _meta_parameters(module), spec.particles, spec.sigma
    first = trial.start()
    pairs = [(first.fork(), first.fork()) for _ in range(n)]
    accumulated = [{name: torch.zeros_like(p) for name, p in meta.items()} for _ in range(n)]
    first_loss = [first.loss.item()]
    for start, end in trial.bounds():
        batches = {t: trial.batch(t) for t in range(start, end + 1)}
        base = {name: p.detach().clone() for name, p in meta.items()}
        gradient = {name: torch.zeros_like(p) for name, p in meta.items()}
        all_terms, all_losses = [], []
        for pair, xi in zip(pairs, accumulated):
            eps = _draw(meta, sigma, generator)
            for name, v in xi.items():
                v.add_(eps[name])
            difference, runs = _antithetic(trial, meta, base, eps, pair, start, end, batches)
            for name, g in gradient.items():
                g.add_(xi[name] * (difference / (2 * n * sigma**2)))
            for terms, losses in runs:
                all_terms.append(torch.stack(terms))
                all_losses.append(torch.stack(losses))
        terms, losses = torch.stack(all_terms).mean(dim=0), torch.stack(all_losses).mean(dim=0)
        yield Estimate(gradient, terms.tolist(), first_loss + losses.tolist(), end, 2 * n * (end - start))
        first_loss = []
