"""The per-parameter MLP learned optimiser (mlp-lopt) against a plain-Python reference, and
as the harness uses it: seeds batched under vmap, meta-trained, run without autograd."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from l2lbench.errors import ConfigError
from l2lbench.execute.learner import FunctionalLearner
from l2lbench.execute.metatest import PreparedData, execution_mode, run_seeds
from l2lbench.execute.metatrain import meta_train
from l2lbench.optimizers.mlp_lopt import MLPLOptState, mlp_lopt
from l2lbench.plugin.base import StepContext
from l2lbench.plugin.learned import bind_fresh
from l2lbench.plugin.tree import tree_stack
from l2lbench.spec.hashing import derive_seed
from l2lbench.spec.metatraining import MetaTrainingSpec
from l2lbench.spec.task import TaskSpec

CPU = torch.device("cpu")
SYNTHETIC = {"kind": "synthetic", "n_train": 128, "n_test": 32}

# A tiny rule: one momentum decay, one timescale, one hidden layer of two units, so that
# the first layer reads 4 + 2 * 1 normalised features and 1 step-count feature.
TINY = dict(hidden=(2,), momentum_decays=(0.5,), rms_decay=0.9, timescales=(10.0,), step_mult=0.1, exp_mult=0.5)
W0 = [[0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7], [-0.3, 0.2, -0.1, 0.5, 0.4, -0.6, -1.0]]
B0 = [0.05, -0.1]
W1 = [[0.8, -0.7], [0.3, 0.9]]
B1 = [0.01, -0.02]


def _reference_tensor(p, g, m, v, t):
    """One tensor's step written out coordinate by coordinate (lists of floats)."""
    m = [0.5 * mi + 0.5 * gi for mi, gi in zip(m, g)]
    v = [0.9 * vi + 0.1 * gi * gi for vi, gi in zip(v, g)]
    r = [1 / math.sqrt(vi + 1e-6) for vi in v]
    features = [g, p, m, v, r, [mi * ri for mi, ri in zip(m, r)]]
    normalised = []
    for f in features:  # each feature over the tensor's coordinates
        rms = math.sqrt(sum(x * x for x in f) / len(f) + 1e-5)
        normalised.append([x / rms for x in f])
    time = math.tanh(t / 10.0)
    new_p, relu_cut = [], False
    for i in range(len(p)):
        x = [f[i] for f in normalised] + [time]
        pre = [sum(w * xk for w, xk in zip(row, x)) + b for row, b in zip(W0, B0)]
        relu_cut |= min(pre) < 0
        h = [max(0.0, z) for z in pre]
        d, mag = (sum(w * hk for w, hk in zip(row, h)) + b for row, b in zip(W1, B1))
        new_p.append(p[i] - d * math.exp(0.5 * mag) * 0.1)
    return new_p, m, v, relu_cut


def _tiny_optimizer():
    opt = mlp_lopt(**TINY)
    module = opt.init_meta(generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        for layer, w, b in zip(module.layers, (W0, W1), (B0, B1)):
            layer.weight.copy_(torch.tensor(w, dtype=torch.float64))
            layer.bias.copy_(torch.tensor(b, dtype=torch.float64))
    return opt.with_meta(module.eval())


def _tiny_inputs():
    f64 = dict(dtype=torch.float64)
    params = {"w": torch.tensor([1.0, -2.0, 0.25], **f64), "b": torch.tensor([0.3], **f64)}
    grads = {"w": torch.tensor([0.5, -1.5, 0.02], **f64), "b": torch.tensor([-0.2], **f64)}
    state = MLPLOptState(
        count=torch.tensor(3),
        momentum={"w": torch.tensor([[0.2], [-0.4], [0.0]], **f64), "b": torch.tensor([[0.1]], **f64)},  # (*shape, decays)
        second_moment={"w": torch.tensor([0.1, 0.3, 0.0], **f64), "b": torch.tensor([0.05], **f64)},
    )
    return params, grads, state


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_one_update_by_hand(grad_enabled):
    """Accumulators, per-tensor normalisation (a one-coordinate tensor too), the MLP with
    hand-set weights and the step formula, against the plain reference."""
    opt = _tiny_optimizer()
    params, grads, state = _tiny_inputs()
    with torch.set_grad_enabled(grad_enabled):
        new, new_state = opt.update(grads, state, params, StepContext(step=3))
    assert int(new_state.count) == 4
    cuts = []
    for name in params:
        p, g = params[name].tolist(), grads[name].tolist()
        m, v = state.momentum[name][:, 0].tolist(), state.second_moment[name].tolist()
        expected, m, v, cut = _reference_tensor(p, g, m, v, 3)
        cuts.append(cut)
        assert new[name].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-14), name
        assert new_state.momentum[name][:, 0].tolist() == pytest.approx(m, rel=1e-14)
        assert new_state.second_moment[name].tolist() == pytest.approx(v, rel=1e-14)
    assert any(cuts)  # the ReLU matters in this case


def test_first_step_time_features_are_zero():
    """At t = 0 every tanh(t / s) is 0: the step-count column's weights do not matter."""
    opt = _tiny_optimizer()
    params, grads, _ = _tiny_inputs()
    first = opt.update(grads, opt.init(params), params, StepContext(step=0))[0]
    with torch.no_grad():
        opt.meta.layers[0].weight[:, -1] += 5.0
    again = opt.update(grads, opt.init(params), params, StepContext(step=0))[0]
    for name in params:
        torch.testing.assert_close(first[name], again[name], rtol=0, atol=0)
        expected = _reference_tensor(params[name].tolist(), grads[name].tolist(), [0.0] * params[name].numel(),
                                     [0.0] * params[name].numel(), 0)[0]
        assert first[name].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_no_grad_path_equals_grad_path_and_leaves_inputs_alone():
    """Meta-test and evolution strategies run without autograd: the numbers are those of
    the differentiable form, and nothing handed in is changed."""
    opt = bind_fresh(mlp_lopt(step_mult=0.05), seed=3)
    g = torch.Generator().manual_seed(1)
    params = {"a.weight": torch.randn(5, 7, generator=g), "a.bias": torch.randn(7, generator=g)}
    state = opt.init(params)
    for t in range(4):
        grads = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
        before = [{k: v.clone() for k, v in tree.items()} for tree in (params, grads, state.momentum)]
        with torch.no_grad():
            fast, fast_state = opt.update(grads, state, params, StepContext(step=t))
        for tree, old in zip((params, grads, state.momentum), before):
            assert all(torch.equal(tree[k], old[k]) for k in old)
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            slow, slow_state = opt.update(grads, state, leaves, StepContext(step=t))
        assert all(v.requires_grad for v in slow.values())
        for k in params:
            torch.testing.assert_close(fast[k], slow[k].detach(), rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(fast_state.momentum[k], slow_state.momentum[k])
        assert not torch.equal(fast["a.bias"], params["a.bias"])
        params, state = fast, fast_state


def test_normalisation_is_per_tensor():
    """Scaling one tensor's gradient and parameter leaves its step unchanged (every
    normalised feature scales with them, up to the epsilons), and leaves the other
    tensor's step alone."""
    opt = bind_fresh(mlp_lopt(norm_eps=1e-30, rsqrt_eps=1e-30), seed=0)
    g = torch.Generator().manual_seed(0)
    params = {"x": torch.randn(50, generator=g, dtype=torch.float64), "y": torch.randn(30, generator=g, dtype=torch.float64)}
    grads = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in params.items()}
    opt = opt.with_meta(opt.meta.double())
    base, _ = opt.update(grads, opt.init(params), params, StepContext(step=0))
    scaled_params, scaled_grads = dict(params, x=params["x"] * 1e3), dict(grads, x=grads["x"] * 1e3)
    scaled, _ = opt.update(scaled_grads, opt.init(scaled_params), scaled_params, StepContext(step=0))
    torch.testing.assert_close(scaled["x"] - scaled_params["x"], base["x"] - params["x"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(scaled["y"], base["y"], rtol=0, atol=0)


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_vmap_over_seeds_equals_each_seed_alone(grad_enabled):
    """Stacked seeds under vmap, with autograd and without:
    each seed normalised over its own tensors only."""
    opt = bind_fresh(mlp_lopt(step_mult=0.5), seed=1)
    g = torch.Generator().manual_seed(2)
    seeds = [{"w": torch.randn(4, 3, generator=g) * (i + 1), "b": torch.randn(3, generator=g)} for i in range(3)]
    grads = [{k: torch.randn(v.shape, generator=g) for k, v in s.items()} for s in seeds]
    alone = []
    for p, gr in zip(seeds, grads):
        state = opt.init(p)
        for t in range(3):
            p, state = opt.update(gr, state, p, StepContext(step=t))
        alone.append(p)
    params, grads_stacked = tree_stack(seeds), tree_stack(grads)
    state = tree_stack([opt.init(p) for p in seeds])
    step = vmap(lambda p, gr, s: opt.update(gr, s, p, StepContext(step=0)), randomness="error")
    with torch.set_grad_enabled(grad_enabled):
        for _ in range(3):
            params, state = step(params, grads_stacked, state)
    for i, single in enumerate(alone):
        for k in single:
            torch.testing.assert_close(params[k][i], single[k], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(single["w"], seeds[i]["w"], atol=1e-3)  # it moved


def test_batched_seeds_like_single_runs(tmp_path):
    """The runner batches mlp-lopt's seeds under vmap (not as coordinates: the
    normalisation is per tensor) and every seed gets the curves it gets alone."""
    task = TaskSpec.from_config({"dataset": SYNTHETIC, "learner": {"kind": "mlp", "hidden": [8]},
                                 "steps": 6, "batch_size": 16, "eval_every": 3})
    learner = FunctionalLearner(task.learner.build(task.dataset.input_shape, task.dataset.num_classes))
    data = PreparedData.from_splits(task.dataset.load(tmp_path), task, CPU)
    opt = bind_fresh(mlp_lopt(step_mult=0.05))
    assert execution_mode(opt, 3, coordinates=learner.num_parameters(), device=CPU) == "batched"
    batched = run_seeds(task, opt, learner, data, [0, 1, 2], device=CPU)
    alone = run_seeds(task, opt, learner, data, [0, 1, 2], device=CPU, vectorize=False)
    for a, b in zip(batched, alone):
        assert a.seed == b.seed and a.eval_steps == b.eval_steps
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5, abs=1e-5)
        assert a.test_loss == pytest.approx(b.test_loss, rel=1e-5, abs=1e-5)
    assert batched[0].test_loss[-1] != pytest.approx(batched[0].test_loss[0], rel=1e-3)  # the learner moved


@pytest.mark.parametrize("estimator", ["tbptt", "es", "pes"])
def test_meta_training_moves_every_meta_parameter(estimator, tmp_path):
    """Truncated back-propagation differentiates through the update; the evolution
    strategies run it without autograd: either way every meta-parameter moves."""
    extra = {} if estimator == "tbptt" else {"estimator": estimator, "particles": 2}
    spec = MetaTrainingSpec.from_config({
        "tasks": [{"dataset": SYNTHETIC, "learner": {"kind": "mlp", "hidden": [8]}}],
        "steps": 10, "batch_size": 16, "trials": 2, "unroll": 5, **extra,
    })
    opt = mlp_lopt()
    result = meta_train(opt, spec, data_dir=tmp_path, device=CPU, progress=False)
    assert len(result.unroll_loss) == 4 and all(math.isfinite(v) for v in result.unroll_loss)
    fresh = opt.init_meta(generator=torch.Generator().manual_seed(derive_seed(spec.hash, "meta-init")))
    after = dict(result.module.named_parameters())
    for name, value in fresh.named_parameters():
        assert torch.isfinite(after[name]).all(), name
        assert not torch.equal(value, after[name]), f"meta-parameter {name} did not move"


def test_initialisation():
    """Weights within two standard deviations of 1/sqrt(fan-in), biases zero; the first
    layer reads 4 + 2 K features and the timescales."""
    opt = mlp_lopt()
    module = opt.init_meta(generator=torch.Generator().manual_seed(0))
    assert [tuple(layer.weight.shape) for layer in module.layers] == [(32, 14 + 11), (32, 32), (2, 32)]
    for layer in module.layers:
        bound = 2 / math.sqrt(layer.in_features)
        assert layer.weight.abs().max() <= bound and layer.weight.std() > 0.5 / math.sqrt(layer.in_features)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    again = opt.init_meta(generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(module.parameters(), again.parameters()))


def test_lists_become_tuples():
    """TOML and --set give lists; the rule keeps tuples (hashable, comparable)."""
    opt = mlp_lopt(hidden=[16, 8], momentum_decays=[0.9], timescales=[10, 100])
    assert (opt.hidden, opt.momentum_decays, opt.timescales) == ((16, 8), (0.9,), (10.0, 100.0))
    assert opt == mlp_lopt(hidden=(16, 8), momentum_decays=(0.9,), timescales=(10.0, 100.0))
    sizes = [layer.weight.shape for layer in opt.init_meta(generator=torch.Generator().manual_seed(0)).layers]
    assert sizes == [(16, 6 + 2), (8, 16), (2, 8)]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(hidden=(32, 0)), r"invalid hidden: \(32, 0\) \(expected a non-empty list of positive integers"),
        (dict(hidden=[]), r"invalid hidden: \[\]"),
        (dict(hidden=(True,)), r"invalid hidden: \(True,\)"),
        (dict(hidden=32), r"invalid hidden: 32"),
        (dict(momentum_decays=(0.9, 1.0)), r"invalid momentum_decays: 1.0 \(expected a number in \[0, 1\)\)"),
        (dict(momentum_decays=()), r"invalid momentum_decays: \(\) \(expected a non-empty list of numbers\)"),
        (dict(rms_decay=-0.1), r"invalid rms_decay: -0.1"),
        (dict(timescales=(10, 0)), r"invalid timescales: 0 \(expected a number in \(0, inf\]\)"),
        (dict(timescales=(10, math.inf)), r"invalid timescales: inf \(expected a finite number\)"),
        (dict(step_mult=0.0), r"invalid step_mult: 0.0"),
        (dict(step_mult=math.inf), r"invalid step_mult: inf \(expected a finite number\)"),
        (dict(exp_mult=-1), r"invalid exp_mult: -1"),
        (dict(exp_mult="big"), r"invalid exp_mult: 'big'"),
        (dict(norm_eps=0), r"invalid norm_eps: 0"),
        (dict(rsqrt_eps=math.nan), r"invalid rsqrt_eps: nan"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        mlp_lopt(**kwargs)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    opt = bind_fresh(mlp_lopt(step_mult=0.05))
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(64, 32, generator=g), "b": torch.randn(32, generator=g)}
    grads = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
    cpu, _ = opt.update(grads, opt.init(params), params, StepContext(step=0))
    cuda_opt = opt.with_meta(opt.meta.to("cuda"))
    on_cuda = {k: v.cuda() for k, v in params.items()}
    gpu, state = cuda_opt.update({k: v.cuda() for k, v in grads.items()}, cuda_opt.init(on_cuda), on_cuda, StepContext(step=0))
    assert state.count.device.type == "cuda" and gpu["w"].device.type == "cuda"
    for k in cpu:
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], rtol=1e-5, atol=1e-6)
