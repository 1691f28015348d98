"""Suites: named sets of tasks x optimisers x seeds, defined as TOML data under tasks/suites.

    description = "..."
    seeds = 5
    optimizers = ["sgd", "momentum", "adam", {entry = "adam", lr = 0.001}]

    [defaults]              # fields every task gets unless it sets them itself
    steps = 1000

    [[tasks]]
    dataset = {kind = "rotated-mnist", angle = 45}
    learner = {kind = "mlp", hidden = [32]}

    [meta_training]         # how learned optimisers are meta-trained (see MetaTrainingSpec)
    tasks = ["rotated-mnist"]   # or "same-as-test": each task's own dataset and learner
    trials = 20

``meta_seeds = K`` (default 1) meta-trains every learned optimiser K times, with
meta-training seeds s..s+K-1; every meta-test seed runs under each copy.

``ruleset = "fixed"`` (default) runs the hyperparameters given; ``"tuned"`` first tunes every
optimiser with a search space on validation data, as the ``[tuning]`` table says (see
:mod:`l2lbench.plan.tuning`).

An optimiser entry may carry ``tasks = ["pattern", ...]`` (it then runs on those tasks
only), ``name = "..."`` (its name in reports) and ``meta_training = {...}`` (overrides).

Built-in suites are the ``*.toml`` files shipped in ``l2lbench.tasks.suites``; ``--suite``
also accepts a path to a TOML file of your own.
"""

from __future__ import annotations

import fnmatch
import tomllib
import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from l2lbench.errors import ConfigError, UsageError
from l2lbench.spec.metatraining import MetaTrainingSpec
from l2lbench.spec.optimizer import OptimizerSpec
from l2lbench.spec.base import spec_config
from l2lbench.spec.task import TaskSpec
from l2lbench.plan.tuning import RULESETS, TuningSpec

SAME_AS_TEST = "same-as-test"
MAX_META_SEEDS = 100  # meta-trainings per learned optimiser and task
SUITE_KEYS = {"description", "seeds", "meta_seeds", "optimizers", "defaults", "tasks", "meta_training", "ruleset", "tuning"}


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    tasks: tuple[TaskSpec, ...]
    optimizers: tuple[OptimizerSpec, ...]
    seeds: int
    source: str
    meta_training: Mapping[str, Any] | None = field(default=None, hash=False)
    # Command-line overrides of every meta-training config (they win over the file).
    meta_overrides: Mapping[str, Any] | None = field(default=None, hash=False)
    # How many times each learned optimiser is meta-trained (meta-training seeds s, s+1, ...,
    # s the config's seed): every meta-test seed runs under every meta-trained copy.
    meta_seeds: int = 1
    ruleset: str = "fixed"
    tuning: TuningSpec = field(default_factory=TuningSpec)

    def meta_trainings_for(self, optimizer: OptimizerSpec, task: TaskSpec) -> list[MetaTrainingSpec]:
        """Every meta-training of a learned optimiser for ``task``: :meth:`meta_training_for`
        under each of the suite's meta-training seeds (empty when it has no config)."""
        base = self.meta_training_for(optimizer, task)
        if base is None:
            return []
        return [dataclasses.replace(base, seed=base.seed + k) for k in range(self.meta_seeds)]

    def meta_training_for(self, optimizer: OptimizerSpec, task: TaskSpec) -> MetaTrainingSpec | None:
        """How a learned optimiser is meta-trained for meta-testing on ``task``: the suite's
        table, the optimiser's overrides, then the command line's; ``tasks =
        "same-as-test"`` means the task's own dataset, learner and (unless the table sets
        ``batch_size``) minibatch size."""
        config = {**(self.meta_training or {}), **(optimizer.meta_training or {}), **(self.meta_overrides or {})}
        if not config:
            return None
        if config.get("tasks") == SAME_AS_TEST:
            own = {"dataset": spec_config(task.dataset), "learner": spec_config(task.learner)}
            if "batch_size" not in config:  # its own minibatch size too, unless the table sets one
                own["batch_size"] = task.batch_size
            config["tasks"] = [own]
        return MetaTrainingSpec.from_config(config)

    def pairs(
        self, task_patterns: list[str] | None = None, optimizers: list[OptimizerSpec] | None = None
    ) -> list[tuple[TaskSpec, OptimizerSpec]]:
        """Every (task, optimiser) of the suite, in task order, honouring ``only``."""
        tasks = self.select_tasks(task_patterns)
        chosen = list(self.optimizers) if optimizers is None else optimizers
        return [(t, o) for t in tasks for o in chosen if not o.only or any(task_matches(t, p) for p in o.only)]

    def with_overrides(
        self,
        *,
        steps: int | None = None,
        meta: Mapping[str, Any] | None = None,
        meta_seeds: int | None = None,
        ruleset: str | None = None,
        tuning_trials: int | None = None,
    ) -> "Suite":
        """The suite with every task's steps, every meta-training key, the number of
        meta-training seeds, the ruleset and/or the tuning trials replaced."""
        tasks = self.tasks if steps is None else tuple(dataclasses.replace(t, steps=steps) for t in self.tasks)
        merged = {**(self.meta_overrides or {}), **(meta or {})} or None
        if ruleset is not None and ruleset not in RULESETS:
            raise UsageError(f"invalid ruleset {ruleset!r} (expected one of {', '.join(RULESETS)})")
        tuning = self.tuning if tuning_trials is None else dataclasses.replace(self.tuning, trials=tuning_trials)
        return dataclasses.replace(self, tasks=tasks, meta_overrides=merged, meta_seeds=meta_seeds or self.meta_seeds,
                                   ruleset=ruleset or self.ruleset, tuning=tuning)

    def select_tasks(self, patterns: list[str] | None) -> tuple[TaskSpec, ...]:
        """Tasks whose name or dataset name matches a pattern (exact, prefix or glob)."""
        if not patterns:
            return self.tasks
        chosen = []
        for pattern in patterns:
            hits = [t for t in self.tasks if task_matches(t, pattern)]
            if not hits:
                raise UsageError(
                    f"no task of suite {self.name!r} matches {pattern!r}; expected one of: "
                    f"{', '.join(t.name for t in self.tasks)}"
                )
            chosen += [t for t in hits if t not in chosen]
        return tuple(chosen)


def task_matches(task: TaskSpec, pattern: str) -> bool:
    """A task pattern: the task's name (glob), its dataset's name, or a name prefix."""
    return fnmatch.fnmatchcase(task.name, pattern) or task.dataset.name == pattern or task.name.startswith(pattern + "-")


def builtin_suites() -> list[str]:
    folder = resources.files("l2lbench.tasks.suites")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a suite file by path."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read suite file {name_or_path!r}: {exc.strerror or exc}") from None
        return parse_suite(text, name=path.stem, source=str(path))
    if name_or_path not in builtin_suites():
        raise UsageError(f"unknown suite {name_or_path!r}; expected one of: {', '.join(builtin_suites())} or a .toml file")
    text = resources.files("l2lbench.tasks.suites").joinpath(f"{name_or_path}.toml").read_text(encoding="utf-8")
    return parse_suite(text, name=name_or_path, source=f"built-in suite {name_or_path}")


def parse_suite(text: str, *, name: str, source: str) -> Suite:
    """Parse and validate suite TOML; every problem is one ``ConfigError`` line naming the source."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid TOML: nested too deeply (expected a suite file)") from None
    try:
        return _build(data, name, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _build(data: Mapping[str, Any], name: str, source: str) -> Suite:
    unknown = sorted(set(data) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))}; expected some of: {', '.join(sorted(SUITE_KEYS))}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"invalid description {description!r} (expected a string)")
    seeds = data.get("seeds", 5)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds <= 0:
        raise ConfigError(f"invalid seeds: {seeds!r} (expected a positive integer)")
    meta_seeds = data.get("meta_seeds", 1)
    if not isinstance(meta_seeds, int) or isinstance(meta_seeds, bool) or not 1 <= meta_seeds <= MAX_META_SEEDS:
        raise ConfigError(f"invalid meta_seeds: {meta_seeds!r} (expected an integer from 1 to {MAX_META_SEEDS})")
    optimizers = data.get("optimizers")
    if not isinstance(optimizers, list) or not optimizers:
        raise ConfigError(f"invalid optimizers: {optimizers!r} (expected a non-empty list of names or tables)")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise ConfigError(f"invalid defaults: {defaults!r} (expected a table)")
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(f"invalid tasks: {tasks!r} (expected one or more [[tasks]] tables)")
    specs: dict[TaskSpec, None] = {}  # ordered, and a set: validation stays linear in the tasks
    for i, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise ConfigError(f"invalid task #{i + 1}: {task!r} (expected a table)")
        try:
            spec = TaskSpec.from_config({**defaults, **task})
        except ConfigError as exc:
            raise ConfigError(f"task #{i + 1}: {exc}") from None
        if spec in specs:
            raise ConfigError(f"task #{i + 1} ({spec.name}) is listed twice")
        specs[spec] = None
    opt_specs = tuple(OptimizerSpec.from_config(o) for o in optimizers)
    for spec in opt_specs:
        if not spec.entry.strip():
            raise ConfigError(f"invalid optimizer {spec.entry!r} (expected a registered name like \"adam\")")
    meta_training = data.get("meta_training")
    if meta_training is not None and not isinstance(meta_training, Mapping):
        raise ConfigError(f"invalid meta_training: {meta_training!r} (expected a table)")
    ruleset = data.get("ruleset", "fixed")
    if ruleset not in RULESETS:
        raise ConfigError(f"invalid ruleset: {ruleset!r} (expected one of {', '.join(RULESETS)})")
    tuning = TuningSpec.from_config(data.get("tuning"))
    suite = Suite(name, description, tuple(specs), opt_specs, seeds, source, meta_training, meta_seeds=meta_seeds,
                  ruleset=ruleset, tuning=tuning)
    for spec in opt_specs:
        if spec.only and not suite.pairs(optimizers=[spec]):
            raise ConfigError(f"optimizer {spec.name!r} runs on tasks {list(spec.only)!r}, which match no task of the suite")
    seen: set[tuple[TaskSpec, str]] = set()  # one name per optimiser per task, so reports cannot mix them up
    for task, spec in suite.pairs():
        if (task, spec.name) in seen:
            raise ConfigError(f"optimizer(s) {spec.name!r} listed twice for task {task.name}")
        seen.add((task, spec.name))
    # Validate every meta-training config now, not after hours of meta-testing.
    if meta_training is not None:
        suite.meta_training_for(OptimizerSpec("(suite)"), suite.tasks[0])
    for task, spec in suite.pairs():
        if spec.meta_training is not None:
            try:
                suite.meta_training_for(spec, task)
            except ConfigError as exc:
                raise ConfigError(f"optimizer {spec.name!r}: {exc}") from None
    return suite


def task_suite(names: list[str]) -> Suite:
    """A suite of named tasks (any task `l2lbench list tasks` shows), for ``run --task``:
    the tasks with the optimisers, seeds, ruleset and meta-training of the first built-in
    suite, in alphabetical order, that lists the first of them."""
    found: dict[str, tuple[TaskSpec, Suite]] = {}
    for suite_name in builtin_suites():
        suite = load_suite(suite_name)
        for task in suite.tasks:
            found.setdefault(task.name, (task, suite))
    unknown = [n for n in names if n not in found]
    if unknown:
        raise UsageError(f"unknown task {unknown[0]!r}; expected a name from `l2lbench list tasks`, e.g. "
                         f"{', '.join(sorted(found)[:4])}")
    home = found[names[0]][1]
    tasks = tuple(dict.fromkeys(found[n][0] for n in names))
    return dataclasses.replace(home, name=f"task {', '.join(names)}", tasks=tasks,
                               source=f"--task (settings of built-in suite {home.name})")

