"""Every fast path (``l2lbench/fastpath``) against its plain reference, table-driven.

Each row runs one fast form and the reference on the same small random inputs and holds
them equal to a stated tolerance: forward values, and gradients where meta-training
differentiates through the form. The references are the plain code paths
(``L2LBENCH_FASTPATH=0``) or, where those are themselves what the fast path shortens,
plain implementations written out here.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from l2lbench.execute.learner import FunctionalLearner
from l2lbench.execute.metatest import PreparedData, execution_mode, run_seeds
from l2lbench.fastpath import SWITCH_ENV
from l2lbench.fastpath import learner as fast_learner
from l2lbench.fastpath import lstm as fast_lstm
from l2lbench.fastpath import mtl2l as fast_mtl2l
from l2lbench.fastpath.native import build
from l2lbench.fastpath.native import lstm as native
from l2lbench.optimizers.lstm import LSTMOptimizer, lstm, lstm_layer
from l2lbench.optimizers.mtl2l import FAMILIES, mtl2l, svd_synapse
from l2lbench.optimizers.sgd import sgd
from l2lbench.plugin.base import StepContext
from l2lbench.plugin.learned import bind_fresh, flatten_coordinates, preprocess_gradients
from l2lbench.plugin.tree import tree_stack
from l2lbench.spec.task import TaskSpec

# float32 after a few LSTM steps or a few learner steps: the forms sum in different orders.
F32 = {"rtol": 1e-5, "atol": 1e-5}
F64 = {"rtol": 1e-12, "atol": 1e-12}


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _layer_inputs(features, units, dtype, coordinates=50, seed=0):
    return tuple(_randn(*shape, seed=seed + k, dtype=dtype) for k, shape in enumerate(
        [(features, coordinates), (units, coordinates), (units, coordinates), (4 * units, features + units), (4 * units,)]
    ))


# --- the coordinatewise LSTM layer: (name, form, differentiable) --------------------------

def _inplace(x, h, c, w, b):
    with torch.no_grad():
        return fast_lstm.lstm_layer_inplace(x, h, c, w, b)


def _inplace_block(x, h, c, w, b):
    """The first layer reading its whole input from one block (x is the raw gradient here)."""
    with torch.no_grad():
        return fast_lstm.lstm_layer_inplace(None, h, c, w, b, block=fast_lstm.first_layer_block(x[0], h, 10.0))


def _inplace_vmap(x, h, c, w, b):
    with torch.no_grad():
        hs, cs = vmap(fast_lstm.lstm_layer_inplace)(*(t.unsqueeze(0) for t in (x, h, c, w, b)))
    return hs[0], cs[0]


LAYER_FORMS = [
    ("inplace", _inplace, False),
    ("inplace-vmap", _inplace_vmap, False),
    ("fused", fast_lstm.lstm_layer_fused, True),
    ("fused-pytorch", fast_lstm._FusedLSTMLayer.apply, True),
]
if build.load("lstm") is not None:
    LAYER_FORMS.append(("fused-native", native.lstm_layer, True))


@pytest.mark.parametrize("name,form,differentiable", LAYER_FORMS, ids=[row[0] for row in LAYER_FORMS])
@pytest.mark.parametrize("features,units", [(2, 20), (20, 1), (5, 5)], ids=["layer1", "one-unit", "square"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_lstm_layer_forms_match_reference(name, form, differentiable, features, units, dtype):
    if name == "fused-native" and dtype != torch.float32:
        pytest.skip("the C kernels run float32 only")
    tol = F32 if dtype == torch.float32 else F64
    inputs = _layer_inputs(features, units, dtype)
    leaves = [t.clone().requires_grad_(differentiable) for t in inputs]
    refs = [t.clone().requires_grad_(differentiable) for t in inputs]
    h, c = form(*leaves)
    h_ref, c_ref = lstm_layer(*refs)
    torch.testing.assert_close((h.detach(), c.detach()), (h_ref.detach(), c_ref.detach()), **tol)
    if differentiable:
        upstream = (_randn(units, 50, seed=20, dtype=dtype), _randn(units, 50, seed=21, dtype=dtype))
        got = torch.autograd.grad((h * upstream[0]).sum() + (c * upstream[1]).sum(), leaves)
        want = torch.autograd.grad((h_ref * upstream[0]).sum() + (c_ref * upstream[1]).sum(), refs)
        for what, g, w in zip(("x", "h", "c", "weight", "bias"), got, want):
            torch.testing.assert_close(g, w, rtol=tol["rtol"], atol=10 * tol["atol"], msg=f"gradient of {what}")


def test_first_layer_block_matches_reference():
    grad = _randn(1, 50, seed=3) * 10.0 ** torch.randint(-8, 2, (1, 50), generator=torch.Generator().manual_seed(4))
    _, h, c, w, b = _layer_inputs(2, 20, torch.float32)
    h_fast, c_fast = _inplace_block(grad, h, c, w, b)
    h_ref, c_ref = lstm_layer(preprocess_gradients(grad[0]).movedim(-1, 0), h, c, w, b)
    torch.testing.assert_close((h_fast, c_fast), (h_ref, c_ref), **F32)


def test_preprocess_rows_matches_preprocess_gradients():
    # Magnitudes on both sides of the threshold e^-10, and zero.
    grad = torch.tensor([0.0, 1.0, -1.0, 3e-5, -3e-5, 5e-5, 1e-6, -2e3])
    expected = preprocess_gradients(grad).movedim(-1, 0)
    torch.testing.assert_close(fast_lstm.preprocess_rows(grad), expected, rtol=1e-6, atol=1e-7)
    out = torch.empty(2, len(grad))
    torch.testing.assert_close(fast_lstm.preprocess_rows(grad, out=out), expected, rtol=1e-6, atol=1e-7)


# --- whole optimiser steps: the fast path against the reference update ---------------------

def _mtl2l_small():
    return mtl2l(hidden=4, context_features=12, hyper_width=6, dropout=(0.0, 0.0, 0.0))


OPTIMIZER_STEPS = [
    ("lstm", lambda: lstm()),
    ("lstm-linear-3-layers", lambda: lstm(head="linear", layers=3)),
    ("mtl2l", _mtl2l_small),
]


def _unroll(opt, *, grad_enabled, steps=3):
    """``steps`` updates of a bound optimiser on a small problem; params, states and (with
    autograd) the meta-gradient of the summed final parameters."""
    g = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(6, 5, generator=g), "b": torch.zeros(6)}
    state = opt.init(params)
    outs = []
    with torch.set_grad_enabled(grad_enabled):
        for t in range(steps):
            grads = {k: torch.randn(v.shape, generator=g) * 10.0 ** (-2 * t) for k, v in params.items()}
            inputs = torch.randn(4, 12, generator=g)
            params, state = opt.update(grads, state, params, StepContext(t, inputs=inputs, generator=g))
            outs.append(flatten_coordinates(params))
        meta_grads = None
        if grad_enabled:
            meta = [p for p in opt.meta.parameters() if p.requires_grad]
            meta_grads = torch.autograd.grad(sum(o.sum() for o in outs), meta, allow_unused=True)
    return [o.detach() for o in outs], [v.detach() for v in state.hidden + state.cell], meta_grads


@pytest.mark.parametrize("grad_enabled", [False, True], ids=["meta-test", "meta-training"])
@pytest.mark.parametrize("name,factory", OPTIMIZER_STEPS, ids=[row[0] for row in OPTIMIZER_STEPS])
def test_optimizer_step_matches_reference(name, factory, grad_enabled, monkeypatch):
    opt = bind_fresh(factory(), seed=5)
    fast = _unroll(opt, grad_enabled=grad_enabled)
    monkeypatch.setenv(SWITCH_ENV, "0")
    reference = _unroll(opt, grad_enabled=grad_enabled)
    torch.testing.assert_close(fast[0], reference[0], **F32)
    torch.testing.assert_close(fast[1], reference[1], **F32)
    if grad_enabled:
        for got, want in zip(fast[2], reference[2]):
            if want is not None:
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_lstm_update_returns_none_where_the_reference_runs(monkeypatch):
    opt = bind_fresh(lstm())
    m = opt.meta
    args = (torch.ones(3), torch.zeros(3), opt.init({"w": torch.zeros(3)}).hidden, opt.init({"w": torch.zeros(3)}).cell,
            list(m.weights), [m.bias(k) for k in range(2)])
    with torch.no_grad():
        assert fast_lstm.lstm_update(*args, preprocess_p=10.0, output_scale=0.1) is not None
        monkeypatch.setenv(SWITCH_ENV, "0")
        assert fast_lstm.lstm_update(*args, preprocess_p=10.0, output_scale=0.1) is None


# --- MTL2L's tricks ---------------------------------------------------------------------

def test_mtl2l_merged_hypernetworks_match_each_one():
    opt = bind_fresh(_mtl2l_small(), seed=2)
    hypers = [opt.meta.hyper[name] for name in FAMILIES]
    x = _randn(7, 12, seed=8)
    with torch.no_grad():
        merged = fast_mtl2l.hypernetworks_without_dropout(hypers, x)
        # Plain: Linear -> ReLU -> Linear, then the batch mean, one hypernetwork at a time.
        plain = torch.cat([(F.relu(x @ h.first.weight.t() + h.first.bias) @ h.second.weight.t() + h.second.bias).mean(0)
                           for h in hypers])
    torch.testing.assert_close(merged, plain, **F32)


@pytest.mark.parametrize("smoothing,relu_rows", [(0.9, 8), (0.0, 0)])
def test_mtl2l_smoothed_context_matches_reference(smoothing, relu_rows):
    opt = bind_fresh(_mtl2l_small(), seed=2)
    hypers = [opt.meta.hyper[name] for name in FAMILIES]
    x = _randn(7, 12, seed=8)
    previous = tuple(_randn(h.second.out_features, seed=10 + k) for k, h in enumerate(hypers))
    with torch.no_grad():
        got = fast_mtl2l.smoothed_context(hypers, x, previous, smoothing=smoothing, relu_rows=relu_rows, training=False)
        raw = [h(x, (0.0, 0.0, 0.0), None) for h in hypers]
        if relu_rows:
            raw[0], raw[1] = F.relu(raw[0]), F.relu(raw[1])
        want = [smoothing * p + (1 - smoothing) * r for p, r in zip(previous, raw)]
    torch.testing.assert_close(list(got), want, **F32)
    assert fast_mtl2l.smoothed_context(hypers, x, previous, smoothing=0.9, relu_rows=0, training=True) is None


def test_mtl2l_composed_synapse_equals_multiplying_through_the_factors():
    """W_t = Q diag(d) P^T folded with the embedding, applied to all coordinates at once,
    equals taking every coordinate through embedding, P^T, diag and Q in turn."""
    opt = bind_fresh(_mtl2l_small(), seed=2)
    m = opt.meta
    d = _randn(4, seed=1).abs()
    features = _randn(2, 9, seed=2)  # (2, coordinates)
    composed = (svd_synapse(m.q, d, m.p) @ m.embed) @ features  # (gates, H, coordinates)
    for g in range(4):
        for k in range(9):
            e = m.embed @ features[:, k]
            expected = m.q[g] @ (d * (m.p[g].t() @ e))
            torch.testing.assert_close(composed[g, :, k], expected, **F32)


# --- the learner: plain functional forms against functional_call --------------------------

LEARNERS = {
    "mlp": lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)),
    "cnn": lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 3)),
}


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_learner_forwards_match_functional_call(name):
    module = LEARNERS[name]()
    shape = (1, 4, 4) if name == "mlp" else (2, 8, 8)
    learner = FunctionalLearner(module)
    params = tree_stack([learner.init(torch.Generator().manual_seed(s)) for s in range(3)])
    inputs = _randn(3, 5, *shape, seed=4)
    one = {k: v[1] for k, v in params.items()}
    torch.testing.assert_close(fast_learner.sequential_forward(module, one, inputs[1]),
                               functional_call(module, one, (inputs[1],)), rtol=0, atol=0)
    stacked = fast_learner.stacked_forward(module, params, inputs)  # (S, classes, B)
    reference = vmap(lambda p, x: functional_call(module, p, (x,)))(params, inputs)  # (S, B, classes)
    torch.testing.assert_close(stacked, reference.transpose(1, 2), **F32)


def test_learner_off_the_fast_path_says_so_once():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x.flatten(1))

    learner = FunctionalLearner(Residual())
    assert not learner.plain and learner.slow_path_reason == "Residual is not an nn.Sequential"
    params = tree_stack([learner.init(torch.Generator().manual_seed(s)) for s in range(2)])
    inputs, labels = _randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learner.seed_losses(params, inputs, labels)
        learner.seed_losses(params, inputs, labels)
    assert [type(w.message) for w in caught] == [fast_learner.SlowPathWarning]
    assert "Residual is not an nn.Sequential" in str(caught[0].message)


# --- meta-test's execution modes against the one-seed reference loop ----------------------

class _NotCoordinatewise:
    """SGD without the coordinatewise flag: its batched seeds run under vmap."""

    def __init__(self):
        self.inner = sgd(lr=0.1)

    def init(self, params, *, generator=None):
        return self.inner.init(params, generator=generator)

    def update(self, grads, state, params, context):
        return self.inner.update(grads, state, params, context)


@dataclasses.dataclass(frozen=True)
class _SmallGroupsLSTM(LSTMOptimizer):
    max_coordinates: ClassVar[int] = 2 * 6370  # two seeds of the learner below per update


EXECUTION_MODES = [
    ("seeds as coordinates", lambda: sgd(lr=0.1), 3),
    ("seeds as coordinates in groups of 2", lambda: bind_fresh(_SmallGroupsLSTM()), 3),
    ("batched learner, update per seed", lambda: bind_fresh(mtl2l()), 2),
    ("batched", _NotCoordinatewise, 3),
    ("single", lambda: bind_fresh(lstm()), 1),  # one seed on the flat layout
]


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    task = TaskSpec.from_config({"dataset": {"kind": "synthetic", "n_train": 64, "n_test": 16},
                                 "learner": {"kind": "mlp", "hidden": [8]}, "steps": 4, "batch_size": 8, "eval_every": 2})
    splits = task.dataset.load(tmp_path_factory.mktemp("data"))
    return task, splits


@pytest.mark.parametrize("mode,factory,seeds", EXECUTION_MODES, ids=[row[0] for row in EXECUTION_MODES])
def test_execution_modes_match_the_reference_loop(mode, factory, seeds, tiny_task, monkeypatch):
    task, splits = tiny_task
    cpu = torch.device("cpu")
    data = PreparedData.from_splits(splits, task, cpu)
    opt = factory()

    def run():
        learner = FunctionalLearner(task.learner.build(task.dataset.input_shape, task.dataset.num_classes))
        assert learner.num_parameters() == 6370
        return execution_mode(opt, seeds, coordinates=6370, device=cpu), run_seeds(task, opt, learner, data, list(range(seeds)), device=cpu)

    fast_mode, fast = run()
    monkeypatch.setenv(SWITCH_ENV, "0")
    reference_mode, reference = run()
    assert fast_mode == mode and reference_mode == ("single" if seeds == 1 else "per seed")
    for a, b in zip(fast, reference, strict=True):
        assert a.seed == b.seed and a.eval_steps == b.eval_steps and a.diverged_step == b.diverged_step
        for curve in ("train_loss", "test_loss", "test_accuracy", "validation_loss", "validation_accuracy"):
            assert getattr(a, curve) == pytest.approx(getattr(b, curve), **{"rel": F32["rtol"], "abs": F32["atol"]}), curve
