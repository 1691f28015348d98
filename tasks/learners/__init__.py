"""Learner architectures as frozen specs: the paper's MLP, its variants, and a small CNN.

One file per learner (``mlp.py``, ``cnn.py``); the base class and the shared field checks
in ``base.py``. ``LEARNERS`` is the built-in table; installed packages add learners
through the entry-point group ``l2lbench.learners`` (:mod:`l2lbench.tasks.registry`).

Example:
    >>> learner_from_config({"kind": "mlp", "hidden": [64, 64], "activation": "tanh"})
    MLP(hidden=(64, 64), activation='tanh')
"""

from __future__ import annotations

from typing import Any, Mapping

from l2lbench.spec.base import build_spec
from l2lbench.tasks.learners.base import ACTIVATIONS, LearnerSpec
from l2lbench.tasks.learners.cnn import CNN
from l2lbench.tasks.learners.mlp import MLP
from l2lbench.tasks.registry import SpecRegistry

__all__ = ["ACTIVATIONS", "CNN", "ENTRY_POINT_GROUP", "LEARNERS", "MLP", "REGISTRY", "LearnerSpec", "learner_from_config"]

ENTRY_POINT_GROUP = "l2lbench.learners"

#: kind -> spec class, the built-in learners.
LEARNERS: dict[str, type[LearnerSpec]] = {"mlp": MLP, "cnn": CNN}

#: The built-ins, then the entry points of ``l2lbench.learners``.
REGISTRY = SpecRegistry("learner", ENTRY_POINT_GROUP, LEARNERS, LearnerSpec)


def learner_from_config(config: Mapping[str, Any]) -> LearnerSpec:
    """``{kind = "mlp", hidden = [64, 64], activation = "tanh"}`` -> ``MLP(...)`` (ConfigError
    on bad input; PluginError naming an installed plug-in that cannot be used)."""
    return build_spec(REGISTRY, config, "learner")
