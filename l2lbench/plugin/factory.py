"""Registry factories made from an optimiser's dataclass, so that each default is written once.

An optimiser written as a frozen dataclass already states its hyperparameters and their
defaults as fields. :func:`from_dataclass` turns the class into the factory the registry
calls and reads: ``inspect.signature`` gives the hyperparameters with the field defaults
(what :func:`l2lbench.spec.optimizer.resolve_hparams` resolves and the store key hashes),
``__doc__`` the one-line description of ``l2lbench list optimizers``. An entry that
differs from the class only in some defaults states just those::

    sgd = from_dataclass(SGD, "Plain SGD; lr 0.01 is the paper's baseline.")
    momentum = from_dataclass(SGD, "SGD with momentum 0.9.", momentum=0.9)

A field that is not a hyperparameter of the entry is fixed by it (``fixed``; AdamW's
``decoupled=True``), and a learned optimiser's ``meta`` (its meta-parameters, bound by
:meth:`~l2lbench.plugin.learned.LearnedOptimizer.with_meta`) never is one. A plain
function with keyword defaults remains a factory as good as this one (third-party
plug-ins); this is only a way not to write the defaults twice.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

#: The field a learned optimiser holds its meta-parameters in (see l2lbench.plugin.learned):
#: bound after meta-training, never a hyperparameter.
META_FIELD = "meta"


class DataclassFactory:
    """Builds ``cls`` from its hyperparameters; made by :func:`from_dataclass`.

    Called like the function it replaces: ``factory(lr=0.1)``; unknown names raise
    ``TypeError`` as a function's would.
    """

    def __init__(self, cls: type, summary: str, fixed: dict[str, Any], defaults: dict[str, Any]) -> None:
        self.cls = cls
        self.fixed = dict(fixed)
        self.defaults = dict(defaults)  # the defaults this entry states instead of the fields'
        self.__doc__ = summary
        self.__module__ = cls.__module__
        parameters = []
        for parameter in inspect.signature(cls).parameters.values():
            if parameter.name in self.fixed or parameter.name == META_FIELD:
                continue
            if parameter.name in self.defaults:
                parameter = parameter.replace(default=self.defaults[parameter.name])
            parameters.append(parameter)
        self.__signature__ = inspect.Signature(parameters)

    def __call__(self, *args: Any, **hparams: Any) -> Any:
        try:
            bound = self.__signature__.bind(*args, **hparams)
        except TypeError as exc:
            raise TypeError(f"{self!r}: {exc} (expected some of: {', '.join(self.__signature__.parameters)})") from None
        bound.apply_defaults()
        return self.cls(**bound.arguments, **self.fixed)

    def __repr__(self) -> str:
        stated = [self.cls.__name__, *([f"fixed={self.fixed!r}"] if self.fixed else [])]
        stated += [f"{k}={v!r}" for k, v in self.defaults.items()]
        return f"from_dataclass({', '.join(stated)})"


def from_dataclass(cls: type, summary: str, *, fixed: dict[str, Any] | None = None, **defaults: Any) -> DataclassFactory:
    """A registry factory for the dataclass ``cls``: its hyperparameters are the fields.

    Args:
        cls: a dataclass optimiser; its field defaults are the entry's defaults.
        summary: the entry's one-line description (``l2lbench list optimizers``).
        fixed: fields set by the entry that are not hyperparameters (AdamW's
            ``decoupled=True``): not resolved, not in the key, not accepted by the factory.
        **defaults: the defaults in which this entry differs from the fields.

    Raises:
        TypeError: ``cls`` is not a dataclass.
        ValueError: ``fixed`` or ``defaults`` names something that is not a field of
            ``cls`` (or ``meta``), or a field both fixes and defaults.

    >>> from l2lbench.optimizers.sgd import SGD
    >>> momentum = from_dataclass(SGD, "SGD with momentum 0.9.", momentum=0.9)
    >>> momentum(lr=0.1)
    SGD(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False)
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"invalid class {cls!r} (expected a dataclass optimiser)")
    fixed = dict(fixed or {})
    fields = [f.name for f in dataclasses.fields(cls) if f.init and f.name != META_FIELD]
    for what, names in (("fixed", fixed), ("default", defaults)):
        unknown = sorted(set(names) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown {what} field(s) {', '.join(map(repr, unknown))} of {cls.__name__}; "
                f"expected some of: {', '.join(fields)}"
            )
    both = sorted(set(fixed) & set(defaults))
    if both:
        raise ValueError(f"field(s) {', '.join(map(repr, both))} of {cls.__name__} both fixed and defaulted "
                         "(expected a hyperparameter with a default or a fixed field, not both)")
    return DataclassFactory(cls, summary, fixed, defaults)
