"""Rulesets: how a suite chooses its optimisers' hyperparameters, on validation data only.

``ruleset = "fixed"`` (the default) runs the values the suite gives, e.g. the paper's lr
0.01 for every baseline. ``ruleset = "tuned"`` gives every optimiser with a search space a
budget of trials (DeepOBS, AlgoPerf):

1. candidates: ``trials`` points of its search space, each hyperparameter on a log scale,
   on a grid (one hyperparameter: ``trials`` log-spaced values; several: the nearest
   per-axis count whose product is at most ``trials``) or by scrambled Sobol sampling
   (:class:`scipy.stats.qmc.Sobol`, seeded from the task and the optimiser);
2. every candidate runs on the *tuning seeds*, seed indices ``TUNING_SEED_BASE + k``,
   disjoint from the final seeds 0..N-1 (other initialisations and batch orders);
   they are ordinary stored runs: resumable, parallel, on Dask;
3. the candidate with the lowest validation objective wins (``objective = "final"``: the
   mean over tuning seeds of the final validation loss; ``"mean"``: of the mean over the
   validation curve); a seed that diverged or failed counts as +inf; ties go to the
   earlier candidate;
4. the winner runs on the final seeds and is reported on the test split, named
   ``<name>-tuned`` with its values (``adam-tuned(lr=0.00316)``).

A search space is declared by an optimiser class (``search_space = {"lr": (1e-5, 0.1)}``,
a class attribute; the built-ins ship one) or by the suite (``[tuning.space]``, per
optimiser name), which wins. An optimiser without one (the learned ones: their
hyperparameters shape what meta-training produces) runs as given.

In a suite file::

    ruleset = "tuned"

    [tuning]
    trials = 8            # candidates per optimiser and task
    seeds = 2             # tuning seeds
    objective = "final"   # or "mean"
    search = "grid"       # or "sobol"
    space = { sgd = { lr = [1e-4, 1.0] } }
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from l2lbench.errors import ConfigError

RULESETS = ("fixed", "tuned")
OBJECTIVES = ("final", "mean")
SEARCHES = ("grid", "sobol")
#: Tuning seed k is seed index TUNING_SEED_BASE + k: never one of a suite's final seeds.
TUNING_SEED_BASE = 1_000_000
MAX_TRIALS = 1000
MAX_TUNING_SEEDS = 100


def _positive_int(name: str, value: Any, most: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise ConfigError(f"invalid tuning {name}: {value!r} (expected an integer from 1 to {most})")
    return value


def check_space(owner: str, space: Any) -> dict[str, tuple[float, float]]:
    """A search space as ``{name: (low, high)}``, 0 < low < high, both finite."""
    if not isinstance(space, Mapping):
        raise ConfigError(f"invalid search space of {owner}: {space!r} (expected a table like {{ lr = [1e-4, 0.1] }})")
    checked = {}
    for name, bounds in space.items():
        ok = (isinstance(bounds, (list, tuple)) and len(bounds) == 2
              and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
              and 0 < bounds[0] < bounds[1])
        if not ok:
            raise ConfigError(f"invalid search range {name} = {bounds!r} of {owner} (expected [low, high] with 0 < low < high)")
        checked[str(name)] = (float(bounds[0]), float(bounds[1]))
    return checked


@dataclass(frozen=True)
class TuningSpec:
    """A suite's ``[tuning]`` table (see the module docstring)."""

    trials: int = 8
    seeds: int = 2
    objective: str = "final"
    search: str = "grid"
    space: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _positive_int("trials", self.trials, MAX_TRIALS)
        _positive_int("seeds", self.seeds, MAX_TUNING_SEEDS)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"invalid tuning objective: {self.objective!r} (expected one of {', '.join(OBJECTIVES)})")
        if self.search not in SEARCHES:
            raise ConfigError(f"invalid tuning search: {self.search!r} (expected one of {', '.join(SEARCHES)})")

    @classmethod
    def from_config(cls, config: Any) -> "TuningSpec":
        if config is None:
            return cls()
        if not isinstance(config, Mapping):
            raise ConfigError(f"invalid tuning: {config!r} (expected a table)")
        allowed = {"trials", "seeds", "objective", "search", "space"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ConfigError(f"unknown tuning key(s) {', '.join(map(repr, unknown))}; expected some of: {', '.join(sorted(allowed))}")
        space = config.get("space", {})
        if not isinstance(space, Mapping):
            raise ConfigError(f"invalid tuning space: {space!r} (expected a table of optimiser names)")
        spaces = {str(name): check_space(f"optimizer {name!r}", s) for name, s in space.items()}
        return cls(**{k: config[k] for k in ("trials", "seeds", "objective", "search") if k in config}, space=spaces)

    @property
    def seed_indices(self) -> list[int]:
        return [TUNING_SEED_BASE + k for k in range(self.seeds)]


def is_tuning_seed(seed: int) -> bool:
    return seed >= TUNING_SEED_BASE


def search_space(optimizer: Any, tuning: TuningSpec) -> dict[str, tuple[float, float]]:
    """The space an optimiser (resolved) is tuned over: the suite's, else its class's; {}
    for none. Every name must be one of its hyperparameters."""
    declared = tuning.space.get(optimizer.name)
    if declared is None:
        declared = getattr(type(optimizer.build()), "search_space", None) or {}
    space = check_space(f"optimizer {optimizer.name!r}", declared)
    unknown = sorted(set(space) - set(optimizer.hparams))
    if unknown:
        raise ConfigError(f"search space of optimizer {optimizer.name!r} names {', '.join(map(repr, unknown))}, which it "
                          f"does not take; expected some of: {', '.join(sorted(optimizer.hparams))}")
    return space


def _round(value: float) -> float:
    # Three significant digits: readable names, and the same value on every machine.
    return float(f"{value:.3g}")


def candidates(space: Mapping[str, tuple[float, float]], tuning: TuningSpec, *, seed: int) -> list[dict[str, float]]:
    """The hyperparameter values to try, in a fixed order (see the module docstring)."""
    import numpy as np

    names = sorted(space)
    if not names:
        return []
    logs = np.log([space[n] for n in names])  # (d, 2)
    if tuning.search == "grid":
        per_axis = max(1, int(math.floor(tuning.trials ** (1 / len(names)) + 1e-9)))
        axes = [np.linspace(0.0, 1.0, per_axis) if per_axis > 1 else np.array([0.5]) for _ in names]
        unit = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(names))
    else:
        from scipy.stats import qmc

        unit = qmc.Sobol(len(names), scramble=True, seed=seed).random(tuning.trials)
    points = np.exp(logs[:, 0] + unit * (logs[:, 1] - logs[:, 0]))
    out: list[dict[str, float]] = []
    for row in points:
        point = {n: _round(float(v)) for n, v in zip(names, row)}
        if point not in out:
            out.append(point)
    return out


def with_values(optimizer: Any, values: Mapping[str, float], registry: Any, *, label: str | None = None) -> Any:
    """The resolved optimiser with ``values`` set (keeping its schedule and where its
    numbers are computed)."""
    spec = optimizer.spec
    hparams = tuple(sorted({**dict(spec.hparams), **values}.items()))
    resolved = registry.resolve(dataclasses.replace(spec, hparams=hparams, label=label))
    return dataclasses.replace(resolved, numerics=optimizer.numerics)


def objective(records: Sequence[Any], kind: str, seeds: Sequence[int]) -> float:
    """Mean over ``seeds`` of each seed's validation objective; +inf for a seed that
    diverged, failed or lacks a validation curve, nan while a seed has not run."""
    by_seed = {r.seed: r for r in records}
    values = []
    for seed in seeds:
        record = by_seed.get(seed)
        if record is None:
            return math.nan
        curve = record.validation_loss
        if record.status != "ok" or not curve or not all(math.isfinite(v) for v in curve):
            values.append(math.inf)
        else:
            values.append(curve[-1] if kind == "final" else sum(curve) / len(curve))
    return sum(values) / len(values)


@dataclass
class Tuned:
    """One optimiser's tuning on one task: every candidate with its objective, the winner."""

    task: Any
    base: Any  # the suite's optimiser, as given
    space: dict[str, tuple[float, float]]
    trials: list[tuple[dict[str, float], Any]]  # (values, resolved candidate)
    objectives: list[float] = field(default_factory=list)
    runs: int = 0  # stored tuning runs
    wall_time_s: float = 0.0
    learner_steps: int = 0

    @property
    def complete(self) -> bool:
        return bool(self.objectives) and not any(math.isnan(v) for v in self.objectives)

    @property
    def best(self) -> int | None:
        """Index of the winning candidate; None until every candidate has run, or when all failed."""
        if not self.complete or all(math.isinf(v) for v in self.objectives):
            return None
        return min(range(len(self.objectives)), key=lambda i: (self.objectives[i], i))

    @property
    def on_edge(self) -> list[str]:
        """Hyperparameters whose chosen value is the lowest or highest candidate tried: the
        range may be too narrow."""
        if self.best is None:
            return []
        chosen = self.trials[self.best][0]
        edge = []
        for name in sorted(self.space):
            tried = [values[name] for values, _ in self.trials]
            if len(set(tried)) > 1 and chosen[name] in (min(tried), max(tried)):
                edge.append(name)
        return edge

    @property
    def tuned_name(self) -> str:
        """``<name>-tuned``: what the winner's final runs are stored and reported as."""
        return f"{self.base.name}-tuned"

    def chosen(self, registry: Any) -> Any:
        """The winner, labelled :attr:`tuned_name`, to run on the final seeds."""
        assert self.best is not None
        return with_values(self.base, self.trials[self.best][0], registry, label=self.tuned_name)


def tuning_plan(pairs: Sequence[tuple[Any, Any]], tuning: TuningSpec, registry: Any) -> list[Tuned]:
    """Every (task, optimiser) with a search space, with its candidates resolved."""
    from l2lbench.spec.hashing import derive_seed

    plans = []
    for task, optimizer in pairs:
        if optimizer.learned:  # its hyperparameters shape what meta-training produces: never tuned
            continue
        space = search_space(optimizer, tuning)
        if not space:
            continue
        points = candidates(space, tuning, seed=derive_seed(task.hash, optimizer.name, "tuning") % 2**32)
        trials = [(values, with_values(optimizer, values, registry)) for values in points]
        plans.append(Tuned(task, optimizer, space, trials))
    return plans


def score(plans: Sequence[Tuned], store_runs: Any, tuning: TuningSpec) -> None:
    """Fill in each plan's objectives and cost from the stored tuning runs.

    ``store_runs(task_hash, optimizer_hash)`` returns the stored runs of that pair."""
    seeds = tuning.seed_indices
    for plan in plans:
        plan.objectives, plan.runs, plan.wall_time_s, plan.learner_steps = [], 0, 0.0, 0
        for _, candidate in plan.trials:
            records = [r for r in store_runs(plan.task.hash, candidate.hash) if r.seed in seeds]
            plan.objectives.append(objective(records, tuning.objective, seeds))
            plan.runs += len(records)
            plan.wall_time_s += sum(r.wall_time_s for r in records)
            plan.learner_steps += sum(len(r.train_loss) for r in records)
