"""Stored runs -> groups: the finished runs of one optimiser on one task, under the names a
report shows.

A :class:`Group` is what every table and plot of a report is computed from. Names are
derived from the stored runs: a task's name, an optimiser's display name (its
non-default hyperparameters included), cut to :data:`MAX_SHOWN` characters and told
apart by what differs (code, protocol, numerics, meta-training seed) where one name
stands for several stored configurations.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from l2lbench.errors import L2LBenchError
from l2lbench.store.runs import RunRecord

#: Provenance key under which a learned optimiser's runs describe its meta-training.
META_TRAINING = "meta_training"
#: Longest name a report shows (a store may hold longer ones, e.g. written by hand).
MAX_SHOWN = 100


@dataclass(frozen=True)
class Group:
    """The finished runs (ok or diverged) of one optimiser on one task, ordered by seed."""

    task: str
    optimizer: str
    records: tuple[RunRecord, ...]

    @property
    def ok(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.records if r.status == "ok" and r.test_loss)

    @property
    def n_diverged(self) -> int:
        return sum(r.status == "diverged" for r in self.records)

    @property
    def meta_training(self) -> dict[str, Any] | None:
        """The learned optimiser's meta-training description; None for hand-designed ones."""
        for record in self.records:
            meta = record.provenance.get(META_TRAINING)
            if isinstance(meta, Mapping):
                return dict(meta)
        return None

    @property
    def meta_datasets(self) -> tuple[str, ...] | None:
        """The datasets a learned optimiser was meta-trained on; None for hand-designed ones."""
        meta = self.meta_training
        return None if meta is None else tuple(str(d) for d in meta.get("datasets", []))

    @property
    def hyperparameters(self) -> dict[str, Any] | None:
        """Every resolved hyperparameter of the runs (defaults filled in)."""
        hparams = self.records[0].optimizer_config.get("hparams")
        return dict(hparams) if isinstance(hparams, Mapping) else None

    @property
    def code(self) -> tuple[str | None, int | None]:
        """(code fingerprint, protocol version) of the runs; None where an older
        l2lbench stored them without."""
        return code_version(self.records[0])

    def wall_times(self) -> tuple[float, float]:
        """Mean wall time per run (s) and per learner step (s) over the finished runs.

        Seeds that ran batched as one computation share its time equally."""
        total = sum(r.wall_time_s for r in self.records)
        steps = sum(len(r.train_loss) for r in self.records)
        return total / len(self.records), (total / steps if steps else math.nan)

    @property
    def task_steps(self) -> int | None:
        steps = self.records[0].task_config.get("steps")
        return steps if isinstance(steps, int) else None

    @property
    def dataset(self) -> str | None:
        return dataset_name(self.records[0].task_config)

    def finals(self) -> dict[int, float]:
        """Final test loss per seed; nan for a diverged seed."""
        return {r.seed: (r.test_loss[-1] if r.status == "ok" and r.test_loss else math.nan) for r in self.records}

    def ok_finals(self) -> np.ndarray:
        """Final test loss of each seed that finished, in seed order."""
        return np.asarray([r.test_loss[-1] for r in self.ok], dtype=float)

    def curves(self, what: str = "test_loss") -> tuple[np.ndarray, np.ndarray]:
        """(eval steps, values of shape (seeds, evals)) over the seeds that finished."""
        ok = self.ok
        if not ok:
            return np.zeros(0, int), np.zeros((0, 0))
        # Every finished seed of a task evaluates at the same steps; the cut guards
        # against stores that mix task versions under one hash.
        length = min(len(r.eval_steps) for r in ok)
        steps = np.asarray(ok[0].eval_steps[:length], dtype=int)
        return steps, np.asarray([getattr(r, what)[:length] for r in ok], dtype=float)

    def label(self) -> str:
        """The optimiser's name, with its meta-training domain and horizon when learned."""
        meta = self.meta_training
        if not meta:
            return self.optimizer
        datasets = ", ".join(self.meta_datasets or ()) or "?"
        horizon = meta.get("horizon")
        return f"{self.optimizer} (meta-trained on {datasets}" + (f", {horizon} steps)" if horizon else ")")


@functools.lru_cache(maxsize=None)
def _dataset_name(config_json: str) -> str | None:
    from l2lbench.tasks.datasets import dataset_from_config

    try:
        return dataset_from_config(json.loads(config_json)).name
    except (L2LBenchError, TypeError, ValueError, KeyError):
        return None


def dataset_name(task_config: Mapping[str, Any]) -> str | None:
    """The dataset name of a stored task config (rebuilt from its spec); None if unknown here."""
    dataset = task_config.get("dataset")
    if not isinstance(dataset, Mapping):
        return None
    return _dataset_name(json.dumps(dataset, sort_keys=True))


def setting_of(task: str, dataset: str | None) -> str:
    """The task name without its dataset: learner and budget, the same across domains.

    >>> setting_of("rotmnist45-mlp784x32x10-relu-1000steps", "rotmnist45")
    'mlp784x32x10-relu-1000steps'
    """
    if dataset and task.startswith(dataset + "-"):
        return task[len(dataset) + 1:]
    return task


def code_version(record: RunRecord) -> tuple[str | None, int | None]:
    """(code fingerprint, protocol version) a run was stored with (see l2lbench.store.codeid)."""
    config = record.optimizer_config
    code = config.get("code")
    fingerprint = code.get("fingerprint") if isinstance(code, Mapping) else None
    protocol = config.get("protocol")
    return fingerprint, protocol if isinstance(protocol, int) else None


def optimizer_label(record: RunRecord) -> str:
    """The optimiser's name with its non-default hyperparameters (``lion(lr=0.0001)``);
    the stored name for runs stored before labels were."""
    label = record.optimizer_config.get("display_name")
    return label if isinstance(label, str) and label else record.optimizer_name


def _display_names(pairs: Iterable[tuple[str, str]], versions: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> dict[str, str]:
    """hash -> name, cut to :data:`MAX_SHOWN` characters; where one name stands for several
    hashes, the parts of ``versions`` (hash -> {"code": ..., "meta-seed": ...}) that tell
    them apart are added (``lstm [meta-seed 1]``, ``sign [code 1a2b3c4d]``), else the hash."""
    names: dict[str, str] = {key: name if len(name) <= MAX_SHOWN else f"{name[:MAX_SHOWN - 12]}... [{key[:8]}]"
                             for key, name in pairs}
    by_name: dict[str, list[str]] = defaultdict(list)
    for key, name in names.items():
        by_name[name].append(key)
    out = {}
    for name, keys in by_name.items():
        if len(keys) == 1:
            out[keys[0]] = name
            continue
        parts = [dict((versions or {}).get(key, {})) for key in keys]
        differing = [p for p in dict.fromkeys(k for part in parts for k in part) if len({str(x.get(p)) for x in parts}) > 1]
        tags = [", ".join(f"{p} {part.get(p, 'unknown')}" for p in differing) for part in parts]
        unique = len(set(tags)) == len(tags) and all(tags)
        for key, tag in zip(keys, tags):
            out[key] = f"{name} [{tag if unique else key[:8]}]"
    return out


def version_parts(record: RunRecord) -> dict[str, Any]:
    """What can set two runs of one optimiser name apart: its code, protocol, numerics and
    meta-training seed (see l2lbench.store.codeid, l2lbench.plan.runs.numerics)."""
    fingerprint, protocol = code_version(record)
    config = record.optimizer_config
    parts: dict[str, Any] = {"code": fingerprint[:8] if fingerprint else "unknown",
                             "protocol": protocol if protocol is not None else "unknown",
                             "numerics": config.get("numerics", "unknown")}
    meta = config.get("meta_training")
    if isinstance(meta, Mapping):
        parts["meta-seed"] = meta.get("seed", 0)
    return parts


def group_runs(records: Sequence[RunRecord]) -> dict[str, list[Group]]:
    """Finished runs grouped by task, then optimiser (by hash: one name never mixes
    configs or code versions)."""
    tasks = _display_names((r.task_hash, r.task_name) for r in records)
    optimizers = _display_names(((r.optimizer_hash, optimizer_label(r)) for r in records),
                                {r.optimizer_hash: version_parts(r) for r in records})
    buckets: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        if record.status in ("ok", "diverged"):
            buckets[(tasks[record.task_hash], optimizers[record.optimizer_hash])].append(record)
    grouped: dict[str, list[Group]] = defaultdict(list)
    for (task, optimizer), runs in sorted(buckets.items()):
        grouped[task].append(Group(task, optimizer, tuple(sorted(runs, key=lambda r: r.seed))))
    return dict(grouped)


def learned_datasets(groups: Mapping[str, Sequence[Group]]) -> dict[str, tuple[str, ...]]:
    """Learned optimiser -> the datasets it was meta-trained on."""
    out: dict[str, tuple[str, ...]] = {}
    for task_groups in groups.values():
        for group in task_groups:
            datasets = group.meta_datasets
            if datasets is not None and group.optimizer not in out:
                out[group.optimizer] = datasets
    return out
