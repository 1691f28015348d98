"""Meta-test one optimiser on one task for S seeds: the inner loop of every benchmark run.

Seeds are paired: seed index k of a task derives the same learner initialisation, the
same minibatch order and the same optimiser generator for every optimiser (see
:func:`run_seeds`). With a batchable optimiser the S seeds run as one computation: the
learners' gradients come from one stacked backward pass
(:meth:`~l2lbench.learner.FunctionalLearner.seed_gradients`), and the updates, by the
optimiser's capability flags (see :func:`execution_mode`):

* ``coordinatewise`` and ``context_free`` (SGD, Adam, the LSTM optimiser): the S seeds'
  flat parameter vectors side by side are the coordinates of one ``update`` call, in
  groups of seeds under the plug-in's ``max_coordinates`` on a CPU;
* ``update_per_seed`` (MTL2L: each seed's synapses come from its own input batch):
  ``update`` once per seed with that seed's own generator, as a seed run alone;
* otherwise ``update`` under ``torch.func.vmap`` over the seeds.

Without batching (or with ``vectorize=False``) the seeds run one after another, the
learner's gradient taken by plain autograd. A ``coordinatewise`` optimiser sees one flat
vector of all parameters where that saves work (see :class:`Layout`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from .hashing import derive_seed
from .learner import FunctionalLearner
from .optim.base import Params, StepContext, capability
from .optim.learned import flatten_coordinates, unflatten_coordinates
from .optim.tree import tree_stack
from .task import TaskSpec
from .tasks.datasets import normalise

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
    index tensor (S seeds x B examples) goes through advanced indexing, 10x slower here.
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


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the
    system at once; call it once at the start of a process that trains (the command line).

    PyTorch allocates CPU tensors with plain ``malloc``. By default glibc returns a freed
    block of more than a few MB to the system (``munmap``, or trimming the heap) and maps
    fresh pages for the next one, so a step that allocates the LSTM optimisers' 8 MB gate
    matrix pays a page fault per 4 KB, now and then, about 0.6 ms per step on average for
    the paper's MLP (3.7 instead of 3.1 ms). With allocations up to 32 MB served from the
    heap and the heap trimmed only beyond 512 MB free, the memory is reused: the resident
    set stays at its high-water mark instead of shrinking between steps.

    Returns:
        Whether the setting took effect (``False`` where the C library is not glibc).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 512 * 2**20))


def seed_groups(optimizer: Any, seeds: int, coordinates: int, device: torch.device) -> list[slice] | None:
    """How S seeds of a ``coordinatewise`` and ``context_free`` optimiser run as coordinates
    of one update: consecutive groups of seeds (all in one, unless the plug-in's
    ``max_coordinates`` limits a CPU update); ``None`` when the optimiser cannot run so."""
    if not (capability(optimizer, "coordinatewise") and capability(optimizer, "context_free")):
        return None
    limit = getattr(optimizer, "max_coordinates", None)
    per_group = seeds if limit is None or device.type != "cpu" else max(1, min(seeds, limit // max(coordinates, 1)))
    return [slice(start, min(start + per_group, seeds)) for start in range(0, seeds, per_group)]


def execution_mode(
    optimizer: Any, seeds: int, *, vectorize: bool = True, coordinates: int = 0, device: torch.device | None = None
) -> str:
    """How :func:`run_seeds` runs ``seeds`` seeds of ``optimizer``: ``"single"`` (one
    seed), ``"seeds as coordinates"`` (the learner's gradients in one stacked pass, the
    seeds' coordinates side by side in one ``update``, or ``"... in groups of G"``),
    ``"batched"`` (``update`` under ``vmap``), ``"batched learner, update per seed"``
    (``update_per_seed`` optimisers) or ``"per seed"`` (not batchable, or
    ``vectorize=False``)."""
    if seeds == 1:
        return "single"
    if not (vectorize and capability(optimizer, "batchable")):
        return "per seed"
    groups = seed_groups(optimizer, seeds, coordinates, device or torch.device("cpu"))
    if groups is not None:
        size = groups[0].stop - groups[0].start
        return "seeds as coordinates" if len(groups) == 1 else f"seeds as coordinates in groups of {size}"
    return "batched learner, update per seed" if capability(optimizer, "update_per_seed") else "batched"


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
        vectorize: batch the seeds with ``vmap`` when the optimiser allows it.
    """
    if vectorize and capability(optimizer, "batchable") and len(seeds) > 1:
        return _train(task, optimizer, learner, data, seeds, device=device, vectorized=True)
    outcomes = []
    for seed in seeds:
        outcomes += _train(task, optimizer, learner, data, [seed], device=device, vectorized=False)
    return outcomes


def _train(
    task: TaskSpec,
    optimizer: Any,
    learner: FunctionalLearner,
    data: PreparedData,
    seeds: list[int],
    *,
    device: torch.device,
    vectorized: bool,
) -> list[SeedOutcome]:
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

    layout = Layout.for_optimizer(optimizer, inits[0], stacked=vectorized)
    packed = [layout.pack(p) for p in inits]
    step_fn: Callable
    if vectorized:
        params = tree_stack(packed)
        eval_fn: Callable = vmap(lambda p: per_seed_eval(layout.unpack(p)))
        batch = lambda t: schedule[t]  # (S, B)
        groups = seed_groups(optimizer, len(seeds), layout.coordinates, device) if layout.shapes else None
        if groups is not None:
            state = [optimizer.init({FLAT_KEY: params[FLAT_KEY][g].reshape(-1)}) for g in groups]
            step_fn = _seeds_as_coordinates_step(learner, optimizer, layout, groups, task.steps)
        elif capability(optimizer, "update_per_seed"):
            state = [optimizer.init(p, generator=g) for p, g in zip(packed, generators)]
            step_fn = _update_per_seed_step(learner, optimizer, layout, generators, task.steps)
        else:
            state = tree_stack([optimizer.init(p, generator=g) for p, g in zip(packed, generators)])
            step_fn = _vmapped_step(learner, optimizer, layout, task.steps)
    else:
        params = packed[0]
        state = optimizer.init(params, generator=generators[0])
        step_fn = _single_step(learner, optimizer, layout, generators[0], task.steps)
        eval_fn = lambda p: per_seed_eval(layout.unpack(p))
        batch = lambda t: schedule[t, 0]  # (B,)

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
                for row, value in zip(evals, eval_fn(params)):
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
            inputs, labels = data.minibatch(batch(t))
            params, state, loss = step_fn(params, state, inputs, labels, t)
            train_loss[t] = loss.reshape(S)

    train_loss, evals = train_loss[:steps_done].cpu(), evals[:, :evals_done].cpu()
    return [
        _outcome(seed, train_loss[:, i].tolist(), eval_steps[:evals_done], *(row[:, i].tolist() for row in evals))
        for i, seed in enumerate(seeds)
    ]


FLAT_KEY = "coordinates"


@dataclass(frozen=True)
class Layout:
    """The parameters as the optimiser sees them: the learner's named tensors, or for a
    ``coordinatewise`` optimiser one flat vector ``{FLAT_KEY: (..., P)}`` (the tensors
    concatenated in key order), of which the learner's tensors are views. Leading
    dimensions (stacked seeds) are kept either way.
    """

    shapes: dict[str, torch.Size] | None = None  # None: the learner's own tensors

    @classmethod
    def for_optimizer(cls, optimizer: Any, params: Params, *, stacked: bool) -> Layout:
        """Flat for a coordinatewise optimiser where that saves work: with ``stacked``
        seeds (under ``vmap`` every tensor operation has a fixed cost, so one operation
        per formula instead of one per tensor pays: Adam on the paper's MLP, 8 seeds,
        0.36 instead of 0.41 ms per seed-step) and for learned optimisers (the
        coordinatewise LSTMs concatenate the coordinates anyway). For one seed of a
        hand-designed rule the concatenation costs more than it saves (SGD 0.35 instead
        of 0.30 ms per step), so it gets the learner's tensors."""
        values = list(params.values())
        uniform = all(v.dtype == values[0].dtype and v.device == values[0].device for v in values)
        if capability(optimizer, "coordinatewise") and uniform and (stacked or capability(optimizer, "learned")):
            return cls({k: v.shape for k, v in params.items()})
        return cls()

    def pack(self, tree: Params, lead: int = 0) -> Params:
        """``tree`` (with ``lead`` leading dimensions) in the optimiser's layout."""
        if self.shapes is None:
            return tree
        return {FLAT_KEY: flatten_coordinates(tree, lead)}

    @property
    def coordinates(self) -> int:
        return sum(shape.numel() for shape in (self.shapes or {}).values())

    def unpack(self, tree: Params) -> Params:
        """The learner's named tensors (views, no copy) of a tree in the optimiser's layout."""
        if self.shapes is None:
            return tree
        return unflatten_coordinates(tree[FLAT_KEY], self.shapes)


def _vmapped_step(learner: FunctionalLearner, optimizer: Any, layout: Layout, horizon: int) -> Callable:
    """The step of S stacked seeds: the learner's gradients in one batched backward pass
    (:meth:`~l2lbench.learner.FunctionalLearner.seed_gradients`), the update under ``vmap``."""

    def per_seed_update(grads: Params, state: Any, params: Params, inputs: Tensor, loss: Tensor, t: int):
        return optimizer.update(grads, state, params, StepContext(step=t, inputs=inputs, loss=loss, horizon=horizon))

    # randomness="error": a plug-in that draws random numbers must say batchable=False.
    update = vmap(per_seed_update, in_dims=(0, 0, 0, 0, 0, None), randomness="error")

    def step(params: Params, state: Any, inputs: Tensor, labels: Tensor, t: int):
        grads, loss = learner.seed_gradients(layout.unpack(params), inputs, labels)
        new_params, new_state = update(layout.pack(grads, lead=1), state, params, inputs, loss, t)
        return new_params, new_state, loss

    return step


def _seeds_as_coordinates_step(
    learner: FunctionalLearner, optimizer: Any, layout: Layout, groups: list[slice], horizon: int
) -> Callable:
    """The step of S stacked seeds of a coordinatewise, context-free optimiser: the
    learner's gradients in one stacked pass; then each group of seeds is one vector of
    (seeds x P) coordinates, updated by one plain call (``states``: one per group)."""

    def step(params: Params, states: list[Any], inputs: Tensor, labels: Tensor, t: int):
        grads, loss = learner.seed_gradients(layout.unpack(params), inputs, labels)
        flat, grad = params[FLAT_KEY], layout.pack(grads, lead=1)[FLAT_KEY]  # (S, P)
        context = StepContext(step=t, horizon=horizon)  # context-free: nothing else to see
        parts, new_states = [], []
        for group, state in zip(groups, states):
            new, state = optimizer.update({FLAT_KEY: grad[group].reshape(-1)}, state, {FLAT_KEY: flat[group].reshape(-1)}, context)
            parts.append(new[FLAT_KEY].view(-1, flat.shape[1]))
            new_states.append(state)
        return {FLAT_KEY: parts[0] if len(parts) == 1 else torch.cat(parts)}, new_states, loss

    return step


def _single_step(
    learner: FunctionalLearner, optimizer: Any, layout: Layout, generator: torch.Generator, horizon: int
) -> Callable:
    """The step of one seed: the learner's gradient by plain autograd (the same numbers as
    ``torch.func.grad``, without the cost of the transform, a third of a small MLP's step)."""

    def step(params: Params, state: Any, inputs: Tensor, labels: Tensor, t: int):
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in layout.unpack(params).items()}
            loss = learner.loss(leaves, inputs, labels)
            grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        loss = loss.detach()
        context = StepContext(step=t, inputs=inputs, loss=loss, generator=generator, horizon=horizon)
        new_params, new_state = optimizer.update(layout.pack(grads), state, params, context)
        return new_params, new_state, loss

    return step


def _update_per_seed_step(
    learner: FunctionalLearner, optimizer: Any, layout: Layout, generators: list[torch.Generator], horizon: int
) -> Callable:
    """The step of S stacked seeds: the learner's gradients batched, ``update`` per seed
    (``states`` is the list of the seeds' own states)."""

    def step(params: Params, states: list[Any], inputs: Tensor, labels: Tensor, t: int):
        grads, loss = learner.seed_gradients(layout.unpack(params), inputs, labels)
        grads = layout.pack(grads, lead=1)
        new_params, new_states = [], []
        for s, state in enumerate(states):
            context = StepContext(step=t, inputs=inputs[s], loss=loss[s], generator=generators[s], horizon=horizon)
            p, state = optimizer.update({k: v[s] for k, v in grads.items()}, state, {k: v[s] for k, v in params.items()}, context)
            new_params.append(p)
            new_states.append(state)
        return tree_stack(new_params), new_states, loss

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