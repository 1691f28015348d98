"""Meta-test's faster steps: S seeds as one computation, and the flat parameter layout.

The reference is :mod:`l2lbench.execute.metatest`'s plain loop: one seed at a time, the
learner's gradient by plain autograd, ``update`` on the learner's named tensors. Where a
plug-in's capability flags allow it (:mod:`l2lbench.plugin.base`), :func:`steps` gives the
loop a faster step of the same numbers (to float rounding; ``tests/test_fastpath.py``):

* several seeds of a ``batchable`` optimiser: the learners' gradients in one stacked
  backward pass (:meth:`~l2lbench.execute.learner.FunctionalLearner.seed_gradients`), and
  the updates, by :func:`mode`:

  - ``coordinatewise`` and ``context_free`` (SGD, Adam, the LSTM optimiser): the seeds'
    flat parameter vectors side by side are the coordinates of one ``update`` call, in
    groups of seeds under the plug-in's ``max_coordinates`` on a CPU (:func:`seed_groups`);
  - ``update_per_seed`` (MTL2L: each seed's synapses come from its own input batch):
    ``update`` once per seed with that seed's own generator, as a seed run alone;
  - otherwise ``update`` under ``torch.func.vmap`` over the seeds;

* a ``coordinatewise`` optimiser sees one flat vector of all parameters where that saves
  work (:class:`Layout`), with one seed too for learned ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.func import vmap

from l2lbench import fastpath
from l2lbench.execute.learner import FunctionalLearner
from l2lbench.plugin.base import Params, StepContext, capability
from l2lbench.plugin.learned import flatten_coordinates, unflatten_coordinates
from l2lbench.plugin.tree import tree_stack

FLAT_KEY = "coordinates"

Step = Callable[[Any, Any, Tensor, Tensor, int], tuple[Any, Any, Tensor]]


class SeedSteps(NamedTuple):
    """How meta-test's loop advances its seeds (the reference builds one for a single seed).

    Attributes:
        params: the seeds' parameters as ``step`` takes them.
        state: the optimiser's state(s) as ``step`` takes them.
        step: ``(params, state, inputs, labels, t) -> (params, state, loss)``.
        evaluate: ``params -> (test loss, test accuracy, validation loss, validation accuracy)``.
        stacked: the seeds run stacked: minibatch indices ``(S, B)`` and one loss per seed.
    """

    params: Any
    state: Any
    step: Step
    evaluate: Callable[[Any], tuple[Tensor, ...]]
    stacked: bool


def batches(optimizer: Any, seeds: int, *, vectorize: bool = True) -> bool:
    """Whether ``seeds`` seeds of ``optimizer`` run stacked, as one computation."""
    return fastpath.enabled() and vectorize and seeds > 1 and capability(optimizer, "batchable")


def mode(optimizer: Any, seeds: int, *, coordinates: int, device: torch.device) -> str:
    """The name of the stacked mode :func:`steps` takes for ``seeds`` seeds (where
    :func:`batches`): ``"seeds as coordinates"`` (or ``"... in groups of G"``),
    ``"batched learner, update per seed"`` or ``"batched"`` (``update`` under ``vmap``)."""
    groups = seed_groups(optimizer, seeds, coordinates, device)
    if groups is not None:
        size = groups[0].stop - groups[0].start
        return "seeds as coordinates" if len(groups) == 1 else f"seeds as coordinates in groups of {size}"
    return "batched learner, update per seed" if capability(optimizer, "update_per_seed") else "batched"


def seed_groups(optimizer: Any, seeds: int, coordinates: int, device: torch.device) -> list[slice] | None:
    """How S seeds of a ``coordinatewise`` and ``context_free`` optimiser run as coordinates
    of one update: consecutive groups of seeds (all in one, unless the plug-in's
    ``max_coordinates`` limits a CPU update); ``None`` when the optimiser cannot run so."""
    if not (capability(optimizer, "coordinatewise") and capability(optimizer, "context_free")):
        return None
    limit = capability(optimizer, "max_coordinates")
    per_group = seeds if limit is None or device.type != "cpu" else max(1, min(seeds, limit // max(coordinates, 1)))
    return [slice(start, min(start + per_group, seeds)) for start in range(0, seeds, per_group)]


def steps(
    learner: FunctionalLearner,
    optimizer: Any,
    inits: list[Params],
    generators: list[torch.Generator],
    *,
    horizon: int,
    device: torch.device,
    evaluate: Callable[[Params], tuple[Tensor, ...]],
) -> SeedSteps | None:
    """A faster way to step the seeds whose initial parameters are ``inits`` (several:
    stacked, where :func:`batches` said so), or ``None``: the reference step applies.

    Args:
        evaluate: one seed's evaluation on the learner's named tensors.
    """
    if not fastpath.enabled():
        return None
    stacked = len(inits) > 1
    layout = Layout.for_optimizer(optimizer, inits[0], stacked=stacked)
    packed = [layout.pack(p) for p in inits]
    if not stacked:
        if layout.shapes is None:
            return None  # one seed on the learner's own tensors: the reference
        state = optimizer.init(packed[0], generator=generators[0])
        step = _flat_single_step(learner, optimizer, layout, generators[0], horizon)
        return SeedSteps(packed[0], state, step, lambda p: evaluate(layout.unpack(p)), stacked=False)
    params = tree_stack(packed)
    groups = seed_groups(optimizer, len(inits), layout.coordinates, device) if layout.shapes else None
    if groups is not None:
        state = [optimizer.init({FLAT_KEY: params[FLAT_KEY][g].reshape(-1)}) for g in groups]
        step = _seeds_as_coordinates_step(learner, optimizer, layout, groups, horizon)
    elif capability(optimizer, "update_per_seed"):
        state = [optimizer.init(p, generator=g) for p, g in zip(packed, generators)]
        step = _update_per_seed_step(learner, optimizer, layout, generators, horizon)
    else:
        state = tree_stack([optimizer.init(p, generator=g) for p, g in zip(packed, generators)])
        step = _vmapped_step(learner, optimizer, layout, horizon)
    return SeedSteps(params, state, step, vmap(lambda p: evaluate(layout.unpack(p))), stacked=True)


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
        per formula instead of one per tensor pays) and for learned optimisers (the
        coordinatewise LSTMs concatenate the coordinates anyway). For one seed of a
        hand-designed rule the concatenation costs more than it saves, so it gets the
        learner's tensors."""
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


def _flat_single_step(
    learner: FunctionalLearner, optimizer: Any, layout: Layout, generator: torch.Generator, horizon: int
) -> Step:
    """The reference's step of one seed, on the flat layout: the learner's tensors are
    views of the flat vector, and its gradients are concatenated into one."""

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


def _vmapped_step(learner: FunctionalLearner, optimizer: Any, layout: Layout, horizon: int) -> Step:
    """The step of S stacked seeds: the learner's gradients in one batched backward pass
    (:meth:`~l2lbench.execute.learner.FunctionalLearner.seed_gradients`), the update under ``vmap``."""

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
) -> Step:
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


def _update_per_seed_step(
    learner: FunctionalLearner, optimizer: Any, layout: Layout, generators: list[torch.Generator], horizon: int
) -> Step:
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
