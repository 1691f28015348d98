"""Helpers shared by every frozen-dataclass spec (datasets, learners, tasks, optimisers).

A spec is a frozen dataclass with a class attribute ``kind``. Its *config* is a plain
JSON-able dict ``{"kind": ..., field: value, ...}`` that round-trips through TOML, the
results store and checkpoints; its *hash* is the content hash of that config. Names are
derived from fields by each spec class and are for people; hashes are for machines.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any, Mapping

from l2lbench.errors import ConfigError
from l2lbench.spec.hashing import content_hash


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return spec_config(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


#: The config key of a plug-in spec's code identity (see :func:`spec_config`).
CODE_KEY = "code"


def spec_config(spec: Any) -> dict[str, Any]:
    """The JSON-able config of a spec, including its ``kind``; for a spec class that is not
    l2lbench's own (a third-party dataset or learner) also what its code is, ``code``, so
    that stored results of changed plug-in code are recomputed, never served, as for an
    optimiser plug-in (:mod:`l2lbench.store.codeid`). Built-in configs are unchanged."""
    config: dict[str, Any] = {"kind": type(spec).kind}
    for field in dataclasses.fields(spec):
        config[field.name] = _plain(getattr(spec, field.name))
    module = type(spec).__module__
    if module != "l2lbench" and not module.startswith("l2lbench."):
        from l2lbench.store.codeid import plugin_code  # imported here: keys sit below specs

        config[CODE_KEY] = plugin_code(module)
    return config


def spec_hash(spec: Any) -> str:
    """Content hash of ``spec_config(spec)``: equal specs hash equal, in any process."""
    return content_hash(spec_config(spec))


class HashedSpec:
    """Mixin for top-level specs: ``config()`` and a cached content ``hash``."""

    @cached_property
    def hash(self) -> str:
        return spec_hash(self)

    def config(self) -> dict[str, Any]:
        return spec_config(self)


def non_default_fields(spec: Any) -> dict[str, Any]:
    """Fields whose value differs from the dataclass default, in declaration order.

    Derived names mention exactly these, so the default spec keeps a short name and two
    specs that differ anywhere get different names.
    """
    out: dict[str, Any] = {}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        else:
            out[field.name] = value
            continue
        if value != default:
            out[field.name] = value
    return out


def format_value(value: Any) -> str:
    """Short spelling of a field value for names: ``0.01``, ``32x32``, ``relu``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "x".join(format_value(v) for v in value)
    return str(value)


def build_spec(
    registry: Mapping[str, type], config: Mapping[str, Any], what: str, *, key: str = "kind"
) -> Any:
    """Construct a spec from a config dict, with one-line errors that name the bad value.

    Args:
        registry: kind name -> spec class.
        config: e.g. ``{"kind": "rotated-mnist", "angle": 45}``.
        what: what is being built, for messages ("dataset", "learner").
        key: the config key that names the kind.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"invalid {what}: expected a table like {{{key} = ...}}, got {config!r}")
    kind = config.get(key)
    if not isinstance(kind, str) or kind not in registry:
        raise ConfigError(
            f"unknown {what} {kind!r}; expected one of: {', '.join(sorted(registry))}"
        )
    cls = registry[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    # A stored config's code identity is derived, never an argument (see spec_config).
    kwargs = {k: v for k, v in config.items() if k not in (key, CODE_KEY)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(
            f"unknown field(s) {', '.join(map(repr, unknown))} for {what} {kind!r}; "
            f"expected some of: {', '.join(sorted(names)) or '(none)'}"
        )
    for field in dataclasses.fields(cls):
        if field.name in kwargs and isinstance(kwargs[field.name], list):
            kwargs[field.name] = tuple(kwargs[field.name])
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {what} {kind!r}: {exc}") from None
