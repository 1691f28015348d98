"""What a learned optimiser is meta-trained on, and how: one frozen spec (Algorithm 1).

The defaults are the paper's (Kuo et al. 2020, Appendix B.4): Q = 20 learners (trials),
S = 100 steps each, an optimiser update every Xi = 5 steps by Adam with learning rate
0.001, meta-gradients clamped to [-1, 1]. The authors' code used unroll 20 and 10 or 50
trials: ``unroll = 20``, ``trials = 10``. Several training tasks are alternated trial by
trial (B.5.3: odd trials Fashion-MNIST, even trials KMNIST).

In a suite file::

    [meta_training]
    tasks = ["fashion-mnist", "kmnist"]   # dataset names or full task tables
    trials = 30
    steps = 100                           # S, the default steps of every task
    estimator = "pes"                     # how the meta-gradient is estimated (default "tbptt")
    sigma = 0.01
    particles = 8

The estimators (truncated back-propagation, antithetic ES, persistent ES) are described in
:mod:`l2lbench.execute.estimators`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Mapping

from l2lbench.errors import ConfigError
from l2lbench.spec.base import HashedSpec, spec_config
from l2lbench.spec.hashing import content_hash
from l2lbench.spec.task import TaskSpec

DEFAULT_STEPS = 100  # S: the meta-training horizon of the paper
META_LOSSES = ("paper", "authors")
ESTIMATORS = ("tbptt", "es", "pes")
#: The fields that only the evolution-strategies estimators read: absent from the config
#: (and so from the hash) of a ``tbptt`` spec, whose meta-training they cannot change.
ES_FIELDS = ("estimator", "sigma", "particles")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"invalid meta-training {name}: {value!r} (expected a positive integer)")


def _number(name: str, value: Any, *, positive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if not ok or (positive and value <= 0) or (not positive and value < 0):
        raise ConfigError(f"invalid meta-training {name}: {value!r} (expected a {'positive' if positive else 'non-negative'} number)")


@dataclass(frozen=True)
class MetaTrainingSpec(HashedSpec):
    """Meta-train on ``tasks`` (alternated trial by trial), one meta-update per truncation.

    Attributes:
        tasks: training tasks; trial q uses ``tasks[q % len(tasks)]`` and its ``steps``
            (S) and ``batch_size``. Learner data come from the training split.
        trials: Q, the number of freshly initialised learners.
        unroll: Xi, learner steps per truncated unroll (one meta-update each).
        lr: Adam's learning rate on the meta-parameters.
        clip: meta-gradients are clamped to [-clip, clip].
        param_noise: add the decaying parameter noise of Appendix B.5.3 after every
            learner update: N(0, 1) * max|theta| * (S - t) / S * a random choice of
            ``noise_scales``, per parameter tensor.
        noise_scales: the scales the noise picks from at each step.
        seed: seeds the meta-initialisation, the learners, batches and noise.
        meta_loss: which loss of each step the meta-objective sums. ``"paper"``
            (Algorithm 1): after the update from batch t, the loss on the next batch,
            ``L(theta_{t+1}; b_{t+1})``, which is also the loss whose gradient drives the
            next update, so it costs nothing extra. ``"authors"`` (their public code):
            the loss after the update on the same batch that gave the gradient,
            ``L(theta_{t+1}; b_t)``: one more learner forward and backward per step.
        estimator: how each truncation's meta-gradient is estimated
            (:mod:`l2lbench.execute.estimators`): ``"tbptt"``, truncated back-propagation
            (Algorithm 1); ``"es"``, antithetic evolution strategies on each truncation;
            ``"pes"``, persistent evolution strategies (Vicol et al. 2021).
        sigma: ES/PES only: the standard deviation of the Gaussian perturbation of every
            meta-parameter.
        particles: ES/PES only: N, the antithetic pairs (2N perturbed learners).
    """

    kind: ClassVar[str] = "meta-training"
    tasks: tuple[TaskSpec, ...]
    trials: int = 20
    unroll: int = 5
    lr: float = 0.001
    clip: float = 1.0
    param_noise: bool = False
    noise_scales: tuple[float, ...] = (0.025, 0.05)
    seed: int = 0
    meta_loss: str = "paper"
    estimator: str = "tbptt"
    sigma: float = 0.01
    particles: int = 8

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("meta-training needs at least one task (expected tasks = [\"mnist\", ...])")
        _positive_int("trials", self.trials)
        _positive_int("unroll", self.unroll)
        _number("lr", self.lr)
        _number("clip", self.clip)
        if not isinstance(self.param_noise, bool):
            raise ConfigError(f"invalid meta-training param_noise: {self.param_noise!r} (expected true or false)")
        if not self.noise_scales:
            raise ConfigError("invalid meta-training noise_scales: [] (expected one or more non-negative numbers)")
        for scale in self.noise_scales:
            _number("noise scale", scale, positive=False)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"invalid meta-training seed: {self.seed!r} (expected a non-negative integer)")
        if self.meta_loss not in META_LOSSES:
            raise ConfigError(f"invalid meta-training meta_loss: {self.meta_loss!r} (expected one of {', '.join(META_LOSSES)})")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"invalid meta-training estimator: {self.estimator!r} (expected one of {', '.join(ESTIMATORS)})")
        _number("sigma", self.sigma)
        _positive_int("particles", self.particles)
        if self.estimator == "tbptt":
            # Back-propagation reads neither: a spec that set them would hash differently
            # from the identical meta-training without them.
            for name in ("sigma", "particles"):
                value, default = getattr(self, name), type(self).__dataclass_fields__[name].default
                if value != default:
                    raise ConfigError(
                        f"invalid meta-training {name}: {value!r} with estimator 'tbptt' "
                        f"(expected estimator = \"es\" or \"pes\", or no {name})"
                    )

    def config(self) -> dict[str, Any]:
        """The spec's config; a ``tbptt`` spec's leaves out the ES fields (see :data:`ES_FIELDS`),
        so it is the config, and has the hash, it had before estimators were a choice."""
        config = spec_config(self)
        if self.estimator == "tbptt":
            for name in ES_FIELDS:
                del config[name]
        return config

    @cached_property
    def hash(self) -> str:
        return content_hash(self.config())

    @cached_property
    def seed_hash(self) -> str:
        """What seeds the meta-initialisation and each trial's learner, batches and the
        optimiser's random draws: the hash of the config without the estimator's fields
        (``hash`` itself for TBPTT), so that meta-trainings that differ only in how the
        meta-gradient is estimated start from the same meta-parameters and train the
        same learners on the same batches."""
        config = spec_config(self)
        for name in ES_FIELDS:
            del config[name]
        return content_hash(config)

    @property
    def horizon(self) -> int:
        """Learner steps per trial (the longest task's S): what the optimiser has seen."""
        return max(task.steps for task in self.tasks)

    @property
    def datasets(self) -> list[str]:
        names: list[str] = []
        for task in self.tasks:
            if task.dataset.name not in names:
                names.append(task.dataset.name)
        return names

    @property
    def name(self) -> str:
        """E.g. ``fashion-mnist+kmnist-30x100steps-unroll5``."""
        steps = "/".join(sorted({str(t.steps) for t in self.tasks}, key=int))
        parts = ["+".join(self.datasets), f"{self.trials}x{steps}steps", f"unroll{self.unroll}"]
        if self.param_noise:
            parts.append("noise")
        if self.meta_loss != "paper":
            parts.append(f"{self.meta_loss}-loss")
        if self.estimator != "tbptt":
            parts.append(f"{self.estimator}{self.particles}-sigma{self.sigma:g}")
        if self.seed:
            parts.append(f"seed{self.seed}")
        return "-".join(parts)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MetaTrainingSpec":
        """From a ``[meta_training]`` table (``steps``/``batch_size`` are task defaults)."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"invalid meta_training {config!r} (expected a table with tasks = [...])")
        allowed = {"kind", "tasks", "steps", "batch_size", "trials", "unroll", "lr", "clip", "param_noise", "noise_scales", "seed", "meta_loss",
                   "estimator", "sigma", "particles"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ConfigError(
                f"unknown meta_training key(s) {', '.join(map(repr, unknown))}; expected some of: {', '.join(sorted(allowed - {'kind'}))}"
            )
        tasks = config.get("tasks")
        if isinstance(tasks, str):
            tasks = [tasks]
        if not isinstance(tasks, (list, tuple)) or not tasks:
            raise ConfigError(f"invalid meta_training tasks: {tasks!r} (expected a list of dataset names or task tables)")
        defaults = {"steps": config.get("steps", DEFAULT_STEPS)}
        if "batch_size" in config:
            defaults["batch_size"] = config["batch_size"]
        specs = []
        for i, task in enumerate(tasks):
            if isinstance(task, TaskSpec):
                specs.append(task)
                continue
            entry = task if isinstance(task, Mapping) and "dataset" in task else {"dataset": task}
            try:
                specs.append(TaskSpec.from_config({**defaults, **entry}))
            except ConfigError as exc:
                raise ConfigError(f"meta_training task #{i + 1}: {exc}") from None
        kwargs = {k: config[k] for k in ("trials", "unroll", "lr", "clip", "param_noise", "seed", "meta_loss", "estimator",
                                         "sigma", "particles") if k in config}
        if "noise_scales" in config:
            scales = config["noise_scales"]
            if not isinstance(scales, (list, tuple)):
                raise ConfigError(f"invalid meta-training noise_scales: {scales!r} (expected a list of numbers)")
            kwargs["noise_scales"] = tuple(scales)
        return cls(tasks=tuple(specs), **kwargs)
