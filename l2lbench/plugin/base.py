"""The optimiser plug-in interface: a pure functional core.

An optimiser is two functions over explicit state (the shape of optax's
``GradientTransformation`` and learned_optimization's ``Optimizer``)::

    state = opt.init(params, generator=g)
    new_params, state = opt.update(grads, state, params, context)

``update`` works out of place and returns *new parameters*, so that meta-training can
differentiate through a chain of updates, the runner can ``torch.func.vmap`` it over
seeds, and a thin adapter (:mod:`l2lbench.plugin.adapter`) can drive a user's model as a
``torch.optim.Optimizer``. Everything a run needs lives in ``state``; a learned
optimiser's meta-parameters are attributes, its per-run hidden states are not.

Params and grads are ``dict[str, Tensor]`` keyed by parameter name (the layout of
``torch.func.functional_call``); the state is any nest of NamedTuples, dicts, tuples and
tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

Params = dict[str, Tensor]
State = Any


@dataclass(frozen=True)
class StepContext:
    """What an update may know about the step besides the gradients.

    Attributes:
        step: 0-based index of the learner step being taken.
        inputs: the learner's current input batch (normalised float tensor, batch first).
            Context-aware optimisers such as MTL2L read it; most ignore it.
        loss: the learner's loss on that batch, before the update (0-dim tensor).
        generator: the run's own random generator for optimisers that draw noise. It is
            ``None`` when seeds are batched with ``vmap``; such optimisers declare
            ``batchable = False`` and run seed by seed.
        horizon: the run's total learner steps (``None`` where unknown, e.g. on a user's
            model through the torch.optim adapter); learning-rate schedules read it.
    """

    step: int
    inputs: Tensor | None = None
    loss: Tensor | None = None
    generator: torch.Generator | None = None
    horizon: int | None = None


@dataclass(frozen=True)
class Capability:
    """A capability flag: what a plug-in declares about itself, as a class attribute,
    for the harness to choose how to run it; ``default`` where it declares nothing."""

    default: bool | int | None
    meaning: str


#: Every capability flag, in one place; read them only through :func:`capability`.
CAPABILITIES: dict[str, Capability] = {
    "batchable": Capability(True, (
        "``update`` can run under ``torch.func.vmap`` (no data-dependent Python control flow, "
        "no random draws, no ``.item()``), so S seeds run as one batch."
    )),
    "differentiable": Capability(True, (
        "``update`` is built from differentiable out-of-place tensor ops, so gradients flow "
        "from later losses into the meta-parameters and the params."
    )),
    "learned": Capability(False, (
        "it has meta-parameters that must be meta-trained before it is meaningful "
        "(``init_meta``/``with_meta``, see :mod:`l2lbench.plugin.learned`)."
    )),
    "coordinatewise": Capability(False, (
        "``update`` treats every coordinate alike, from that coordinate's own gradient, "
        "parameter and state entries (plus the shared context): applied to all tensors "
        "concatenated into one flat vector it gives the same numbers, so the runner may train "
        "on one flat vector (SGD, Adam, the coordinatewise LSTMs). The conformance check "
        "``coordinatewise_flat`` holds a plug-in to it."
    )),
    "context_free": Capability(False, (
        "``update`` reads nothing of the step context (no inputs, loss or generator) and "
        "``init`` draws no random numbers. With ``coordinatewise`` the S seeds of a batched "
        "run are then simply S x P coordinates of one run: one ``update`` for all seeds, no "
        "``vmap`` (checked by ``seeds_as_coordinates``)."
    )),
    "max_coordinates": Capability(None, (
        "the most coordinates one ``update`` call should get on a CPU, for rules with a large "
        "working set per coordinate (the LSTM optimiser's 80 gate values): seeds run as "
        "coordinates in groups that stay under it. ``None``: no limit. Ignored on GPUs."
    )),
    "update_per_seed": Capability(False, (
        "with seeds batched, the runner still batches the learner but calls ``update`` seed by "
        "seed (each seed has state too large or too different to stack, e.g. MTL2L's per-seed "
        "synapses)."
    )),
}

#: The flags that say how the runner may execute a plug-in: what a wrapper (such as a
#: schedule) must pass on.
EXECUTION_FLAGS = tuple(name for name in CAPABILITIES if name != "learned")


def capability(optimizer: Any, flag: str) -> bool | int | None:
    """The capability flag ``flag`` of any plug-in object (see :data:`CAPABILITIES`), its
    default where the object does not declare it: a ``bool``, or for ``max_coordinates``
    an ``int`` or ``None``.

    >>> capability(object(), "batchable"), capability(object(), "max_coordinates")
    (True, None)
    """
    if flag not in CAPABILITIES:
        raise ValueError(f"unknown capability flag: {flag!r} (expected one of {', '.join(CAPABILITIES)})")
    default = CAPABILITIES[flag].default
    value = getattr(optimizer, flag, default)
    return bool(value) if isinstance(default, bool) else value


class Optimizer:
    """Convenience base class for plug-ins, declaring every capability flag at its default
    (:data:`CAPABILITIES` says what each one means; a plug-in overrides those it has).

    Attributes:
        search_space: what a ``tuned`` suite searches (see :mod:`l2lbench.plan.tuning`):
            ``{hyperparameter: (low, high)}``, each searched on a log scale; ``{}``: run
            as given. Not a capability: the runner never reads it to pick a code path.
    """

    batchable: ClassVar[bool] = CAPABILITIES["batchable"].default
    differentiable: ClassVar[bool] = CAPABILITIES["differentiable"].default
    learned: ClassVar[bool] = CAPABILITIES["learned"].default
    coordinatewise: ClassVar[bool] = CAPABILITIES["coordinatewise"].default
    context_free: ClassVar[bool] = CAPABILITIES["context_free"].default
    max_coordinates: ClassVar[int | None] = CAPABILITIES["max_coordinates"].default
    update_per_seed: ClassVar[bool] = CAPABILITIES["update_per_seed"].default
    search_space: ClassVar[dict[str, tuple[float, float]]] = {}

    def init(self, params: Params, *, generator: torch.Generator | None = None) -> State:
        raise NotImplementedError

    def update(
        self, grads: Params, state: State, params: Params, context: StepContext
    ) -> tuple[Params, State]:
        raise NotImplementedError


def interface_problems(optimizer: Any) -> list[str]:
    """What is missing for ``optimizer`` to satisfy the interface (empty when it does)."""
    methods = ("init", "update") + (("init_meta", "with_meta") if capability(optimizer, "learned") else ())
    return [f"has no callable {m}()" for m in methods if not callable(getattr(optimizer, m, None))]
