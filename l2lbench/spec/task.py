"""A benchmark task: dataset x learner x step budget, as one frozen spec.

The name is derived (``mnist-mlp784x32x10-relu-1000steps``) and the content hash of the
whole config keys every stored result, so results of two tasks that differ in any field
can never be mixed up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from l2lbench.errors import ConfigError
from l2lbench.spec.base import HashedSpec
from l2lbench.tasks.datasets import dataset_from_config
from l2lbench.tasks.learners import MLP, learner_from_config


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"invalid {name}: {value!r} (expected a positive integer)")


@dataclass(frozen=True)
class TaskSpec(HashedSpec):
    """Train ``learner`` on ``dataset`` for ``steps`` minibatch steps.

    Attributes:
        dataset: a dataset spec from :mod:`l2lbench.tasks.datasets` (with preprocessing).
        learner: a learner spec from :mod:`l2lbench.tasks.learners`; default the paper's MLP.
        steps: learner updates per run (the paper meta-tests for 1000).
        batch_size: training minibatch size (the paper's 128).
        eval_every: test-set loss and accuracy every this many steps (the paper plots 10),
            plus at step 0 and after the last step.
        eval_examples: evaluate on the first N test examples; ``None`` = the whole test set.
    """

    kind: ClassVar[str] = "task"
    dataset: Any
    learner: Any = field(default_factory=MLP)
    steps: int = 1000
    batch_size: int = 128
    eval_every: int = 10
    eval_examples: int | None = None

    def __post_init__(self) -> None:
        _positive_int("steps", self.steps)
        _positive_int("batch_size", self.batch_size)
        _positive_int("eval_every", self.eval_every)
        if self.eval_examples is not None:
            _positive_int("eval_examples", self.eval_examples)

    @property
    def name(self) -> str:
        parts = [
            self.dataset.name,
            self.learner.label(self.dataset.input_shape, self.dataset.num_classes),
            f"{self.steps}steps",
        ]
        if self.batch_size != 128:
            parts.append(f"bs{self.batch_size}")
        if self.eval_every != 10:
            parts.append(f"eval{self.eval_every}")
        if self.eval_examples is not None:
            parts.append(f"test{self.eval_examples}")
        return "-".join(parts)

    def eval_steps(self) -> list[int]:
        """Steps after which the test set is evaluated: 0, k, 2k, ..., and the last step."""
        steps = list(range(0, self.steps + 1, self.eval_every))
        if steps[-1] != self.steps:
            steps.append(self.steps)
        return steps

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TaskSpec":
        """From ``{dataset = {...}, learner = {...}, steps = ..., ...}`` (a suite entry)."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"invalid task {config!r} (expected a table with a dataset)")
        allowed = {"kind", "dataset", "learner", "steps", "batch_size", "eval_every", "eval_examples"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ConfigError(
                f"unknown task field(s) {', '.join(map(repr, unknown))}; expected some of: "
                f"{', '.join(sorted(allowed - {'kind'}))}"
            )
        if "dataset" not in config:
            raise ConfigError(f"task {dict(config)!r} has no dataset (expected dataset = {{kind = ...}})")
        dataset = config["dataset"]
        if isinstance(dataset, str):
            dataset = {"kind": dataset}
        learner = config.get("learner", {"kind": "mlp"})
        if isinstance(learner, str):
            learner = {"kind": learner}
        kwargs = {k: config[k] for k in ("steps", "batch_size", "eval_every", "eval_examples") if k in config}
        return cls(dataset=dataset_from_config(dataset), learner=learner_from_config(learner), **kwargs)
