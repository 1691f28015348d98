"""Every registered optimiser (and a torch.optim bridge entry) through the conformance table."""

from __future__ import annotations

import pytest
import torch

from l2lbench.plugin.registry import OptimizerRegistry
from l2lbench.plugin.torch_bridge import from_torch
from l2lbench.testing import CHECKS, run_check, run_conformance


def _entries():
    registry = OptimizerRegistry.default(entry_points=False)
    table = [(e.name, e.factory) for e in registry.entries()]
    table.append(("torch-adagrad", from_torch(torch.optim.Adagrad, lr=0.1)))
    return table


ENTRIES = _entries()


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("name,factory", ENTRIES, ids=[n for n, _ in ENTRIES])
def test_conformance(name, factory, check):
    run_check(check, factory)


class _InPlaceSGD:
    """A broken plug-in: updates params in place (breaks differentiation and vmap)."""

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        for k in params:
            params[k].sub_(0.1 * grads[k])
        return params, state


class _WrongShape:
    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        return {k: v.flatten() for k, v in params.items()}, state


class _Diverging:
    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        return {k: v + 10.0 * grads[k] for k, v in params.items()}, state


class _NormalisedSGD:
    """Claims coordinatewise, but divides each tensor's gradient by that tensor's norm."""

    coordinatewise = True

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        return {k: v - 0.1 * grads[k] / grads[k].norm() for k, v in params.items()}, state


class _SharedNormSGD:
    """Claims context-free coordinatewise, but scales by the norm of all coordinates together."""

    coordinatewise = True
    context_free = True

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        scale = torch.cat([g.reshape(-1) for g in grads.values()]).norm()
        return {k: v - 0.1 * grads[k] / scale for k, v in params.items()}, state


class _ContextReader:
    """Claims context-free, but reads the input batch."""

    coordinatewise = True
    context_free = True

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        return {k: v - 0.1 * context.inputs.mean() * grads[k] for k, v in params.items()}, state


@pytest.mark.parametrize(
    "plugin,check,message",
    [
        (_SharedNormSGD, "seeds_as_coordinates", "beside another seed"),
        (_NormalisedSGD, "coordinatewise_flat", "flat vector vs named tensors"),
        (_InPlaceSGD, "out_of_place", "modified params entry"),
        (_WrongShape, "interface", "has shape"),
        (_Diverging, "converges_on_quadratic", "expected below half"),
    ],
)
def test_conformance_catches_broken_plugins(plugin, check, message):
    with pytest.raises(AssertionError, match=message):
        run_check(check, plugin)


def test_a_context_reading_plugin_cannot_claim_context_free():
    with pytest.raises(AttributeError):
        run_check("seeds_as_coordinates", _ContextReader)


def test_run_conformance_reports_every_check():
    report = run_conformance(_WrongShape)
    assert set(report) == set(CHECKS)
    assert report["interface"].startswith("FAILED")
