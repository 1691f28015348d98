"""Optimiser configs: an entry name plus hyperparameters, with a derived name and hash."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from l2lbench.errors import ConfigError
from l2lbench.spec.hashing import canonical_json, content_hash
from l2lbench.spec.base import format_value


#: The longest optimiser name accepted: names head report rows, legends and file names.
MAX_NAME = 100
NAME_EXPECTED = f"expected a non-empty string of at most {MAX_NAME} characters"


def bad_name(name: Any) -> str | None:
    """None for a usable optimiser name (see :data:`NAME_EXPECTED`), else the name as an
    error message shows it (a long one cut)."""
    if isinstance(name, str) and name.strip() and len(name) <= MAX_NAME:
        return None
    return repr(name[:40] + "..." if isinstance(name, str) and len(name) > MAX_NAME else name)


@dataclass(frozen=True)
class OptimizerSpec:
    """Which registered entry to run, with which non-default hyperparameters.

    ``hparams`` holds only what the user set; the resolved config (every argument of the
    entry's factory, defaults filled in) is what gets hashed, so changing a plug-in's
    default hyperparameter gives its results a new key instead of silently mixing them.

    >>> OptimizerSpec("adam", (("lr", 0.001),)).name
    'adam-lr0.001'
    """

    entry: str
    hparams: tuple[tuple[str, Any], ...] = ()
    # Learned entries only: overrides of the suite's [meta_training] table.
    meta_training: Mapping[str, Any] | None = field(default=None, hash=False)
    # Task patterns this entry runs on (empty: every task of the suite).
    only: tuple[str, ...] = ()
    # A name for reports instead of the derived one (e.g. two differently meta-trained
    # "lstm" entries that run on disjoint tasks).
    label: str | None = None
    # A learning-rate schedule (l2lbench.plugin.schedule): a kind or a table; part of the key.
    schedule: Any = field(default=None, hash=False)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        parts = [self.entry, *(f"{k}{format_value(v)}" for k, v in self.hparams)]
        if self.schedule is not None:
            from l2lbench.plugin.schedule import Schedule

            parts.append(Schedule.from_config(self.schedule).label)
        return "-".join(parts)

    @classmethod
    def from_config(cls, config: Any) -> "OptimizerSpec":
        """From a suite entry: ``"adam"``, ``{entry = "adam", lr = 0.001}``, or for a
        learned entry ``{entry = "mtl2l", meta_training = {trials = 30}}``. Reserved keys
        besides hyperparameters: ``tasks`` (patterns of the tasks it runs on) and ``name``."""
        if isinstance(config, str):
            from l2lbench.plugin.library import parse_call

            call = parse_call(config)  # "torch:Adagrad(lr=0.01)", "adam(lr=0.003, schedule=\"cosine\")"
            return cls(config) if call is None else cls.from_config({"entry": call[0], **call[1]})
        if isinstance(config, Mapping) and isinstance(config.get("entry"), str):
            entry = config["entry"]
            reserved = ("entry", "meta_training", "tasks", "name", "schedule")
            hparams = tuple(sorted((str(k), v) for k, v in config.items() if k not in reserved))
            meta_training = config.get("meta_training")
            if meta_training is not None and not isinstance(meta_training, Mapping):
                raise ConfigError(f"invalid meta_training {meta_training!r} of optimizer {entry!r} (expected a table)")
            only = config.get("tasks", [])
            if isinstance(only, str):
                only = [only]
            if not isinstance(only, list) or not all(isinstance(p, str) and p for p in only):
                raise ConfigError(f"invalid tasks {only!r} of optimizer {entry!r} (expected a list of task patterns)")
            label = config.get("name")
            if label is not None and bad_name(label):
                raise ConfigError(f"invalid name {bad_name(label)} of optimizer {entry!r} ({NAME_EXPECTED})")
            schedule = config.get("schedule")
            if schedule is not None:
                from l2lbench.plugin.schedule import Schedule

                try:
                    Schedule.from_config(schedule)  # checked now, not mid-run
                except ConfigError as exc:
                    raise ConfigError(f"optimizer {entry!r}: {exc}") from None
                schedule = schedule if isinstance(schedule, str) else dict(schedule)
            return cls(entry, hparams, dict(meta_training) if meta_training is not None else None, tuple(only), label,
                       schedule)
        raise ConfigError(
            f"invalid optimizer {config!r} (expected a name like \"adam\" or a table like "
            "{entry = \"adam\", lr = 0.001})"
        )


def _finite(value: Any) -> bool:
    """No nan or inf anywhere in a hyperparameter (they would make every comparison and
    every stored key meaningless)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(map(_finite, value))
    if isinstance(value, Mapping):
        return all(map(_finite, value.values()))
    return True


def resolve_hparams(factory: Callable[..., Any], hparams: Mapping[str, Any], name: str) -> dict[str, Any]:
    """All of the factory's keyword arguments with defaults filled in, checked by name."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return dict(hparams)
    accepted = {
        k: p for k, p in signature.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    open_ended = getattr(factory, "accepts_any_kwargs", False) or any(
        p.kind is p.VAR_KEYWORD for p in signature.parameters.values()
    )
    for key, value in hparams.items():
        if not _finite(value):
            raise ConfigError(f"invalid {key}: {value!r} for optimizer {name!r} (expected a finite number)")
    unknown = sorted(set(hparams) - set(accepted))
    if unknown and not open_ended:
        raise ConfigError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for optimizer {name!r}; "
            f"expected some of: {', '.join(accepted) or '(none)'}"
        )
    resolved = factory_defaults(factory)
    resolved.update(hparams)
    return resolved


def factory_defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    """The factory's keyword arguments that have defaults, with them."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}
    return {
        k: p.default for k, p in signature.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not inspect.Parameter.empty
    }


def non_default(factory: Callable[..., Any], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters of ``resolved`` that differ from the factory's defaults
    (compared as canonical JSON, so a list spelling a tuple default is the default)."""
    defaults = factory_defaults(factory)
    missing = object()

    def same(a: Any, b: Any) -> bool:
        try:
            return canonical_json(a) == canonical_json(b)
        except (TypeError, ValueError):
            return a == b

    return {k: v for k, v in resolved.items() if (d := defaults.get(k, missing)) is missing or not same(v, d)}


def display_name(name: str, hparams: Mapping[str, Any]) -> str:
    """A name for reports with the hyperparameters that make it what it is.

    >>> display_name("lion", {"lr": 0.0001, "betas": (0.9, 0.99)})
    'lion(betas=0.9x0.99, lr=0.0001)'
    >>> display_name("adam", {})
    'adam'
    """
    if not hparams:
        return name
    return f"{name}({', '.join(f'{k}={format_value(v)}' for k, v in sorted(hparams.items()))})"


def config_hash(entry: str, resolved: Mapping[str, Any], code: Mapping[str, Any] | None = None, **meta: str) -> str:
    """The key of an optimiser config in the results store.

    ``code`` is the code identity's key part (:func:`l2lbench.store.codeid.key_part`: the code
    fingerprint, distribution and protocol version); ``meta`` holds the rest: where the
    numbers are computed (``numerics``) and a learned optimiser's meta-parameters
    (``meta_training=<spec hash>`` or ``checkpoint=<file digest>``).
    """
    key: dict[str, Any] = {"entry": entry, "hparams": dict(resolved)}
    if code is not None:
        key["code"] = dict(code)
    if meta:
        key["meta"] = dict(meta)
    return content_hash(key)
