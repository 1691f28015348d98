"""Meta-test one optimiser on one task for S seeds: the inner loop of every benchmark run.

Seeds are paired: seed index k of a task derives the same learner initialisation, the
same minibatch order and the same optimiser generator for every optimiser (see
:func:`run_seeds`). The loop here is the reference: one seed at a time, the learner's
gradient by plain autograd, ``update`` on the learner's named tensors. Where a faster step
of the same numbers applies (several seeds as one stacked computation, a flat parameter
vector for a coordinatewise optimiser), :func:`l2lbench.fastpath.seeds.steps` supplies it
and the loop runs that instead; :func:`execution_mode` names what runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from l2lbench.execute.learner import FunctionalLearner
from l2lbench.fastpath import seeds as fast_seeds
from l2lbench.fastpath.seeds import SeedSteps
from l2lbench.plugin.base import Params, StepContext
from l2lbench.spec.hashing import derive_seed
from l2lbench.spec.task import TaskSpec
from l2lbench.tasks.datasets import normalise

EVAL_CHUNK = 1000  # test examples per forward pass: bounds memory for S seeds x CNN


@dataclass
class SeedOutcome:
    """The curves of one seed (what the store keeps, minus the keys)."""

    seed: int
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)  # at the same steps as test
    validation_accuracy: list[float] = field(default_factory=list)
    diverged_step: int | None = None


@dataclass(frozen=True)
class PreparedData:
    """A task's data on the device: uint8 train images, float normalised validation and
    test images (the first ``eval_examples`` of each, when the task limits them)."""

    train_images: Tensor  # (N, C, H, W) uint8
    train_labels: Tensor  # (N,) int64
    test_inputs: Tensor  # (M, C, H, W) float32, normalised
    test_labels: Tensor
    mean: float
    std: float
    validation_inputs: Tensor  # (V, C, H, W) float32, normalised
    validation_labels: Tensor

    @classmethod
    def from_splits(cls, splits: Any, task: TaskSpec, device: torch.device) -> PreparedData:
        def evaluated(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
            if task.eval_examples is not None:
                images, labels = images[: task.eval_examples], labels[: task.eval_examples]
            return normalise(images.to(device), splits.mean, splits.std), labels.to(device)

        test_inputs, test_labels = evaluated(splits.test_images, splits.test_labels)
        validation_inputs, validation_labels = evaluated(splits.validation_images, splits.validation_labels)
        return cls(
            train_images=splits.train_images.to(device),
            train_labels=splits.train_labels.to(device),
            test_inputs=test_inputs,
            test_labels=test_labels,
            mean=splits.mean,
            std=splits.std,
            validation_inputs=validation_inputs,
            validation_labels=validation_labels,
        )

    def minibatch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised training inputs and labels of ``indices`` (any shape)."""
        return minibatch(self.train_images, self.train_labels, indices, self.mean, self.std)


def minibatch(images: Tensor, labels: Tensor, indices: Tensor, mean: float, std: float) -> tuple[Tensor, Tensor]:
    """``normalise(images[indices])`` and ``labels[indices]`` for an index tensor of any shape.

    ``index_select`` on the flattened indices gathers whole rows; indexing with a 2-D
    index tensor (S seeds x B examples) would go through the much slower advanced indexing.
    """
    flat = indices.reshape(-1)
    inputs = normalise(images.index_select(0, flat), mean, std)
    return inputs.view(*indices.shape, *images.shape[1:]), labels.index_select(0, flat).view(indices.shape)


def batch_schedule(num_examples: int, steps: int, batch_size: int, seed: int) -> Tensor:
    """Minibatch indices for every step, ``(steps, batch_size)``: shuffled epochs.

    Each epoch is a fresh permutation from a generator seeded with ``seed``; the last
    incomplete batch of an epoch is dropped (as ``DataLoader(drop_last=True)``), so every
    example is seen at most once per epoch.
    """
    if batch_size > num_examples:
        raise ValueError(f"batch size {batch_size} exceeds the {num_examples} training examples")
    generator = torch.Generator().manual_seed(seed)
    per_epoch = num_examples // batch_size
    epochs = math.ceil(steps / per_epoch)
    batches = [
        torch.randperm(num_examples, generator=generator)[: per_epoch * batch_size].view(per_epoch, batch_size)
        for _ in range(epochs)
    ]
    return torch.cat(batches)[:steps]


def execution_mode(
    optimizer: Any, seeds: int, *, vectorize: bool = True, coordinates: int = 0, device: torch.device | None = None
) -> str:
    """How :func:`run_seeds` runs ``seeds`` seeds of ``optimizer``: ``"single"`` (one
    seed), ``"per seed"`` (the reference loop, seed after seed: not batchable, or
    ``vectorize=False``), or the stacked mode of the fast path
    (:func:`l2lbench.fastpath.seeds.mode`: ``"seeds as coordinates"``, ``"... in groups
    of G"``, ``"batched learner, update per seed"``, ``"batched"``)."""
    if seeds == 1:
        return "single"
    if not fast_seeds.batches(optimizer, seeds, vectorize=vectorize):
        return "per seed"
    return fast_seeds.mode(optimizer, seeds, coordinates=coordinates, device=device or torch.device("cpu"))


def evaluate(learner: FunctionalLearner, params: Params, data: PreparedData) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean test loss and accuracy, then mean validation loss and accuracy, of one seed's
    ``params``."""
    return (*_evaluate_split(learner, params, data.test_inputs, data.test_labels),
            *_evaluate_split(learner, params, data.validation_inputs, data.validation_labels))


def _evaluate_split(learner: FunctionalLearner, params: Params, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean loss and accuracy on one split, in chunks of ``EVAL_CHUNK``."""
    device = labels.device
    total_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    for start in range(0, len(labels), EVAL_CHUNK):
        stop = start + EVAL_CHUNK
        loss, hits = learner.loss_and_correct(params, inputs[start:stop], labels[start:stop])
        total_loss, correct = total_loss + loss, correct + hits
    n = len(labels)
    return total_loss / n, correct.float() / n


def run_seeds(
    task: TaskSpec,
    optimizer: Any,
    learner: FunctionalLearner,
    data: PreparedData,
    seeds: list[int],
    *,
    device: torch.device,
    vectorize: bool = True,
) -> list[SeedOutcome]:
    """Train the task's learner with ``optimizer`` from each seed; return the curves.

    Args:
        task: the task spec (steps, batch size, evaluation cadence, hash for seeds).
        optimizer: a built plug-in with ``init``/``update``.
        learner: the task's learner in functional form.
        data: the task's data on ``device``.
        seeds: seed indices; seed k gives the same init and batches for every optimiser.
        vectorize: run the seeds stacked, as one computation, when the optimiser allows it
            (:func:`l2lbench.fastpath.seeds.batches`).
    """
    if fast_seeds.batches(optimizer, len(seeds), vectorize=vectorize):
        return _train(task, optimizer, learner, data, seeds, device=device)
    outcomes = []
    for seed in seeds:
        outcomes += _train(task, optimizer, learner, data, [seed], device=device)
    return outcomes


def _train(
    task: TaskSpec,
    optimizer: Any,
    learner: FunctionalLearner,
    data: PreparedData,
    seeds: list[int],
    *,
    device: torch.device,
) -> list[SeedOutcome]:
    """Train ``seeds`` (several: stacked, by the fast path) and return their curves."""
    inits = [
        learner.init(torch.Generator().manual_seed(derive_seed(task.hash, s, "init")), device) for s in seeds
    ]
    generators = [torch.Generator(device=device).manual_seed(derive_seed(task.hash, s, "optimizer")) for s in seeds]
    schedule = torch.stack(
        [batch_schedule(len(data.train_labels), task.steps, task.batch_size, derive_seed(task.hash, s, "data")) for s in seeds],
        dim=1,
    ).to(device)  # (steps, S, B)

    def per_seed_eval(params: Params) -> tuple[Tensor, ...]:
        return evaluate(learner, params, data)

    run = fast_seeds.steps(learner, optimizer, inits, generators, horizon=task.steps, device=device, evaluate=per_seed_eval)
    if run is None:
        state = optimizer.init(inits[0], generator=generators[0])
        run = SeedSteps(inits[0], state, _single_step(learner, optimizer, generators[0], task.steps), per_seed_eval, stacked=False)
    params, state = run.params, run.state

    S = len(seeds)
    train_loss = torch.full((task.steps, S), math.nan, device=device)
    eval_steps = task.eval_steps()
    # Rows: test loss, test accuracy, validation loss, validation accuracy.
    evals = torch.full((4, len(eval_steps), S), math.nan, device=device)
    validation_loss = evals[2]
    evals_done, steps_done = 0, task.steps

    # Meta-test needs no graph through the optimiser: no_grad keeps memory flat over
    # thousands of steps (the step functions differentiate the learner inside).
    with torch.no_grad():
        for t in range(task.steps + 1):
            if t == eval_steps[evals_done]:
                for row, value in zip(evals, run.evaluate(params)):
                    row[evals_done] = value.reshape(S)
                evals_done += 1
                # One device sync per evaluation, not per step: once every seed has
                # diverged there is nothing left to learn.
                alive = torch.isfinite(train_loss[:t]).all(dim=0) & torch.isfinite(validation_loss[:evals_done]).all(dim=0)
                if not bool(alive.any()):
                    steps_done = t
                    break
            if t == task.steps:
                break
            inputs, labels = data.minibatch(schedule[t] if run.stacked else schedule[t, 0])  # (S, B) or (B,)
            params, state, loss = run.step(params, state, inputs, labels, t)
            train_loss[t] = loss.reshape(S)

    train_loss, evals = train_loss[:steps_done].cpu(), evals[:, :evals_done].cpu()
    return [
        _outcome(seed, train_loss[:, i].tolist(), eval_steps[:evals_done], *(row[:, i].tolist() for row in evals))
        for i, seed in enumerate(seeds)
    ]


def _single_step(learner: FunctionalLearner, optimizer: Any, generator: torch.Generator, horizon: int) -> Callable:
    """The step of one seed: the learner's gradient by plain autograd, then ``update`` on
    the learner's named tensors."""

    def step(params: Params, state: Any, inputs: Tensor, labels: Tensor, t: int):
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            loss = learner.loss(leaves, inputs, labels)
            grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        loss = loss.detach()
        context = StepContext(step=t, inputs=inputs, loss=loss, generator=generator, horizon=horizon)
        new_params, new_state = optimizer.update(grads, state, params, context)
        return new_params, new_state, loss

    return step


def _outcome(
    seed: int, train: list[float], steps: list[int], test: list[float], acc: list[float],
    validation: list[float], validation_acc: list[float],
) -> SeedOutcome:
    """Cut one seed's curves at its divergence.

    Train loss at step t and an evaluation at step t both measure the parameters after t
    updates, so a seed diverges at the first step where the train or the validation loss
    is non-finite (never the test loss: no decision reads the test split), and keeps only
    what was measured before that step.
    """
    first_train = next((t for t, v in enumerate(train) if not math.isfinite(v)), None)
    first_eval = next((s for s, v in zip(steps, validation) if not math.isfinite(v)), None)
    candidates = [t for t in (first_train, first_eval) if t is not None]
    diverged = min(candidates) if candidates else None
    if diverged is None:
        return SeedOutcome(seed, train, steps, test, acc, validation, validation_acc)
    kept = [j for j, s in enumerate(steps) if s < diverged]
    return SeedOutcome(
        seed,
        train[:diverged],
        [steps[j] for j in kept],
        [test[j] for j in kept],
        [acc[j] for j in kept],
        [validation[j] for j in kept],
        [validation_acc[j] for j in kept],
        diverged_step=diverged,
    )