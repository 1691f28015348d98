"""The LSTM optimiser and MTL2L against values computed by hand and straightforward
reference implementations (the fast paths compose matrices; these do not)."""

from __future__ import annotations

import math

import pytest
import torch

from torch.func import vmap

from l2lbench.errors import UsageError
from l2lbench.execute.learner import FunctionalLearner
from l2lbench.plugin.base import StepContext
from l2lbench.fastpath.lstm import lstm_layer_fused, lstm_layer_inplace, preprocess_rows
from l2lbench.plugin.learned import bind_fresh, flatten_coordinates, preprocess_gradients
from l2lbench.optimizers.lstm import LSTMOptimizer, lstm, lstm_layer
from l2lbench.optimizers.mtl2l import FAMILIES, haar_orthogonal, mtl2l
from l2lbench.spec.task import TaskSpec
from l2lbench.execute.metatest import PreparedData, execution_mode, run_seeds


@pytest.mark.parametrize(
    "g,expected",
    [
        (1.0, (0.0, 1.0)),
        (-0.5, (math.log(0.5) / 10, -1.0)),
        (math.exp(-10), (-1.0, 1.0)),  # the threshold itself takes the log branch
        (1e-5, (-1.0, math.exp(10) * 1e-5)),  # below e^-p: (-1, e^p g)
        (-2e-6, (-1.0, -math.exp(10) * 2e-6)),
        (0.0, (-1.0, 0.0)),
        (100.0, (math.log(100.0) / 10, 1.0)),
    ],
)
def test_preprocessing_by_hand(g, expected):
    out = preprocess_gradients(torch.tensor([g], dtype=torch.float64), p=10.0)
    assert out.shape == (1, 2)
    assert out[0].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_preprocessing_p_parameter():
    # p = 2: threshold e^-2 ~ 0.135; 0.1 is below it, 1.0 above.
    out = preprocess_gradients(torch.tensor([0.1, math.e], dtype=torch.float64), p=2.0)
    assert out.flatten().tolist() == pytest.approx([-1.0, math.exp(2) * 0.1, 0.5, 1.0])


def test_preprocessing_gradient_is_finite_at_zero():
    g = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    preprocess_gradients(g).sum().backward()
    assert torch.isfinite(g.grad).all()


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("init_scheme", ["authors", "pytorch"])
def test_one_lstm_step_by_hand(init_scheme):
    """A 1-layer LSTM with one unit (authors' head, layers=1): every number by hand. With the
    authors' initialisation the bias is the sum of two rows plus the input/forget offsets."""
    opt = lstm(layers=1, hidden=1, output_scale=0.1, init_scheme=init_scheme)
    module = opt.init_meta(generator=torch.Generator().manual_seed(0))
    # weight rows: [x0, x1, h]; columns: gates i, f, a, o.
    w = [[0.1, 0.2, 0.3, 0.4], [0.5, -0.6, 0.7, -0.8], [0.9, 1.0, -1.1, 1.2]]
    b = [0.01, 0.02, 0.03, 0.04]
    with torch.no_grad():
        module.weights[0].copy_(torch.tensor(w).t())
        if init_scheme == "authors":
            module.biases[0].copy_(torch.tensor([[0.0, 0.0, 0.01, 0.02], [0.01, 0.02, 0.02, 0.02]]))
            module.offsets.copy_(torch.tensor([[-0.5], [0.7]]))
            b = [0.01 - 0.5, 0.02 + 0.7, 0.03, 0.04]
        else:
            module.biases[0].copy_(torch.tensor([b]))
    opt = opt.with_meta(module)
    g = -0.5
    params = {"theta": torch.tensor([2.0])}
    state = opt.init(params)
    new, state = opt.update({"theta": torch.tensor([g])}, state, params, StepContext(0))

    x = (math.log(0.5) / 10, -1.0)
    pre = [x[0] * w[0][k] + x[1] * w[1][k] + 0.0 * w[2][k] + b[k] for k in range(4)]
    c = _sigmoid(pre[1]) * 0.0 + _sigmoid(pre[0]) * math.tanh(pre[2])
    h = _sigmoid(pre[3]) * math.tanh(c)
    assert new["theta"].item() == pytest.approx(2.0 + 0.1 * h, rel=1e-6)
    assert state.cell[0].item() == pytest.approx(c, rel=1e-6)
    assert state.hidden[0].item() == pytest.approx(h, rel=1e-6)

    # A second step reads the carried hidden and cell state.
    new2, _ = opt.update({"theta": torch.tensor([1.0])}, state, new, StepContext(1))
    x2 = (0.0, 1.0)
    pre2 = [x2[0] * w[0][k] + x2[1] * w[1][k] + h * w[2][k] + b[k] for k in range(4)]
    c2 = _sigmoid(pre2[1]) * c + _sigmoid(pre2[0]) * math.tanh(pre2[2])
    h2 = _sigmoid(pre2[3]) * math.tanh(c2)
    assert new2["theta"].item() == pytest.approx(2.0 + 0.1 * h + 0.1 * h2, rel=1e-6)


def test_linear_head_matches_torch_lstm_cells():
    """The textbook variant equals two nn.LSTMCell layers plus a linear head."""
    opt = bind_fresh(lstm(head="linear"), seed=3)
    module = opt.meta
    cells = []
    for k, (weight, (n_in, n_out)) in enumerate(zip(module.weights, zip(module.sizes, module.sizes[1:]))):
        cell = torch.nn.LSTMCell(n_in, n_out)
        with torch.no_grad():
            cell.weight_ih.copy_(weight[:, :n_in])
            cell.weight_hh.copy_(weight[:, n_in:])
            cell.bias_ih.copy_(module.bias(k))
            cell.bias_hh.zero_()
        cells.append(cell)
    generator = torch.Generator().manual_seed(1)
    params = {"a": torch.randn(5, 3, generator=generator), "b": torch.randn(3, generator=generator)}
    state = opt.init(params)
    hc = [(torch.zeros(18, n), torch.zeros(18, n)) for n in module.units]
    theta = flatten_coordinates(params)
    for t in range(3):
        grads = {k: torch.randn(v.shape, generator=generator) * 10.0 ** (-2 * t) for k, v in params.items()}
        params, state = opt.update(grads, state, params, StepContext(t))
        x = preprocess_gradients(flatten_coordinates(grads))
        for i, cell in enumerate(cells):
            hc[i] = cell(x, hc[i])
            x = hc[i][0]
        theta = theta + 0.1 * module.head(x).squeeze(1)
        torch.testing.assert_close(flatten_coordinates(params), theta.detach(), rtol=1e-6, atol=1e-6)


def _within(t, bound, tol=1e-6):
    """All of ``t`` in [-bound, bound], and spread over most of it (not a narrower draw)."""
    t = t.detach().abs()
    return bool((t <= bound + tol).all()) and float(t.max()) > 0.8 * bound


def test_lstm_authors_initialisation():
    """The authors' code (B001d): layer 1 U(+-1/sqrt(4*20)), the one-unit layer 2 U(+-1/sqrt(4));
    two bias vectors per layer; -1/+1 input/forget offsets as parameters of their own."""
    opt = bind_fresh(lstm())
    m = opt.meta
    assert m.sizes == [2, 20, 1]  # authors: second layer has one unit, no head
    assert m.head is None
    assert _within(m.weights[0], 1 / math.sqrt(80)) and _within(m.weights[1], 0.5)
    assert m.biases[0].shape == (2, 80) and m.biases[1].shape == (2, 4)
    assert _within(m.biases[0], 1 / math.sqrt(80)) and _within(m.biases[1], 0.5)
    assert torch.equal(m.offsets, torch.tensor([[-1.0] * 20, [1.0] * 20]))
    assert "offsets" in dict(m.named_parameters())
    bias = m.bias(0)
    torch.testing.assert_close(bias[:20], m.biases[0][:, :20].sum(0) - 1)  # input gate
    torch.testing.assert_close(bias[20:40], m.biases[0][:, 20:40].sum(0) + 1)  # forget gate
    torch.testing.assert_close(bias[40:], m.biases[0][:, 40:].sum(0))  # cell and output gates
    torch.testing.assert_close(m.bias(1), m.biases[1].sum(0))  # layer 2: no offsets


def test_lstm_pytorch_initialisation_is_the_earlier_one():
    opt = bind_fresh(lstm(init_scheme="pytorch"))
    m = opt.meta
    assert m.offsets is None and m.biases[0].shape == (1, 80)
    assert _within(m.weights[0], 1 / math.sqrt(20)) and _within(m.weights[1], 1.0)
    bias, bound = m.bias(0), 2 / math.sqrt(20)  # sum of two U(-1/sqrt(H), 1/sqrt(H)) draws
    assert (bias[:20] < -1 + bound + 1e-6).all() and (bias[:20] > -1 - bound - 1e-6).all()  # input gate -1
    assert (bias[20:40] > 1 - bound - 1e-6).all() and (bias[20:40] < 1 + bound + 1e-6).all()  # forget gate +1
    textbook = bind_fresh(lstm(head="linear"))
    assert textbook.meta.sizes == [2, 20, 20] and textbook.meta.head is not None


def test_separate_bias_terms_take_their_own_adam_step():
    """Adam's first step moves every element by lr (m / sqrt(v) = sign g): the input gate's
    bias, three terms in the authors' layout, moves by 3 lr; the cell gate's, two, by 2 lr."""
    from l2lbench.fastpath.meta_adam import MetaAdam

    m = lstm().init_meta(generator=torch.Generator().manual_seed(0))
    before = m.bias(0).detach().clone()
    meta_optimizer = MetaAdam(m, lr=0.001)
    m.bias(0).sum().backward()  # gradient 1 on every effective bias element
    meta_optimizer.step()
    moved = before - m.bias(0).detach()
    torch.testing.assert_close(moved[:40], torch.full((40,), 0.003), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(moved[40:], torch.full((40,), 0.002), rtol=1e-4, atol=1e-7)


def test_meta_init_is_a_function_of_the_generator():
    for factory in (lstm, mtl2l):
        a = factory().init_meta(generator=torch.Generator().manual_seed(7)).state_dict()
        b = factory().init_meta(generator=torch.Generator().manual_seed(7)).state_dict()
        c = factory().init_meta(generator=torch.Generator().manual_seed(8)).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_unbound_learned_optimizer_says_what_to_do():
    with pytest.raises(UsageError, match="meta-train it"):
        lstm().init({"w": torch.zeros(2)})


@pytest.mark.parametrize(
    "factory,kwargs,match",
    [
        (lstm, {"hidden": 0}, "invalid hidden: 0"),
        (lstm, {"head": "mlp"}, "invalid head: 'mlp'"),
        (lstm, {"output_scale": 0.0}, "invalid output_scale: 0.0"),
        (mtl2l, {"smoothing": 1.0}, "invalid smoothing: 1.0"),
        (mtl2l, {"dropout": (0.1, 0.2)}, "invalid dropout"),
        (mtl2l, {"hidden": 1}, "invalid hidden: 1"),
    ],
)
def test_bad_hyperparameters(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


# --- MTL2L -------------------------------------------------------------------------


def test_mtl2l_factors_are_orthonormal_fixed_buffers():
    opt = bind_fresh(mtl2l())
    module = opt.meta
    buffers = dict(module.named_buffers())
    assert set(buffers) == {"q", "p", "s", "j"}
    for name, factor in buffers.items():
        assert factor.shape == (4, 20, 20)
        eye = torch.eye(20).expand(4, 20, 20)
        torch.testing.assert_close(factor.transpose(1, 2) @ factor, eye, atol=1e-5, rtol=0)
        torch.testing.assert_close(factor @ factor.transpose(1, 2), eye, atol=1e-5, rtol=0)
    # Never trained: buffers are not parameters, so no optimiser can move them.
    assert not set(buffers) & {n for n, _ in module.named_parameters()}
    # Distinct per gate and per family.
    assert not torch.allclose(buffers["q"][0], buffers["q"][1])
    assert not torch.allclose(buffers["q"][0], buffers["p"][0])


@pytest.mark.parametrize("dim,count,seed", [(20, 16, 0), (20, 16, 123456789), (3, 2, 7)])
def test_haar_orthogonal_equals_scipy_ortho_group(dim, count, seed):
    from scipy.stats import ortho_group

    expected = ortho_group.rvs(dim=dim, size=count, random_state=seed)
    assert (haar_orthogonal(dim, count, seed) == expected).all()


def test_meta_training_process_does_not_import_scipy():
    # scipy.stats costs 63 MB of resident memory; init_meta must not pull it in.
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from l2lbench.plugin.learned import bind_fresh\n"
        "from l2lbench.optimizers.mtl2l import mtl2l\n"
        "bind_fresh(mtl2l())\n"
        "print('scipy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _reference_mtl2l_step(opt, grads, state, params, inputs):
    """MTL2L written out per gate and per coordinate (no composition, no folding)."""
    m = opt.meta
    x = inputs.reshape(inputs.shape[0], -1)
    raw = [m.hyper[f].second(torch.relu(m.hyper[f].first(x))).mean(0) for f in FAMILIES]
    if opt.smooth_after_relu:
        raw[0], raw[1] = torch.relu(raw[0]), torch.relu(raw[1])
    smoothed = [opt.smoothing * prev + (1 - opt.smoothing) * r for prev, r in zip(state.context, raw)]
    gamma, omega = torch.relu(smoothed[0]), torch.relu(smoothed[1])
    g = flatten_coordinates(grads)
    xe = preprocess_gradients(g) @ m.embed.t()  # Linear(2, 20) without bias
    h1, c1 = state.hidden[0].t(), state.cell[0].t()  # (coordinates, units) here
    h2, c2 = state.hidden[1].t(), state.cell[1].t()
    H = m.hidden
    bias1, bias2 = m.bias(m.bias1, H), m.bias(m.bias2, 1)
    pre1 = []
    for gate in range(4):
        W = m.q[gate] @ torch.diag(gamma) @ m.p[gate].t()
        U = m.s[gate] @ torch.diag(omega) @ m.j[gate].t()
        pre1.append(xe @ W.t() + h1 @ U.t() + bias1[gate * H : (gate + 1) * H])
    i, f, a, o = pre1
    c1 = torch.sigmoid(f) * c1 + torch.sigmoid(i) * torch.tanh(a)
    h1 = torch.sigmoid(o) * torch.tanh(c1)
    per_gate = lambda v, gate: v[gate if v.numel() == 4 else 0]  # noqa: E731
    pre2 = [
        per_gate(smoothed[2], gate) * (h1 @ m.input2[gate]).unsqueeze(1) + per_gate(smoothed[3], gate) * h2 + bias2[gate]
        for gate in range(4)
    ]
    i, f, a, o = pre2
    c2 = torch.sigmoid(f) * c2 + torch.sigmoid(i) * torch.tanh(a)
    h2 = torch.sigmoid(o) * torch.tanh(c2)
    return flatten_coordinates(params) + 0.1 * h2.squeeze(1), smoothed


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["meta-training path", "meta-test path"])
@pytest.mark.parametrize("kwargs", [
    {}, {"smoothing": 0.0}, {"layer2_gates": 1, "smooth_after_relu": False, "init_scheme": "pytorch"},
], ids=["authors", "no-smoothing", "earlier-l2lbench"])
def test_mtl2l_matches_straightforward_implementation(kwargs, grad_enabled):
    opt = bind_fresh(mtl2l(**kwargs), seed=4)
    generator = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(32, 784, generator=generator) * 0.05, "b": torch.zeros(32)}
    state = opt.init(params)
    for t in range(3):
        inputs = torch.randn(16, 1, 28, 28, generator=generator)
        grads = {k: torch.randn(v.shape, generator=generator) * 0.01 for k, v in params.items()}
        expected, smoothed = _reference_mtl2l_step(opt, grads, state, params, inputs)
        with torch.set_grad_enabled(grad_enabled):
            params, state = opt.update(grads, state, params, StepContext(t, inputs=inputs))
        torch.testing.assert_close(flatten_coordinates(params), expected.detach(), atol=1e-5, rtol=1e-5)
        for got, want in zip(state.context, smoothed):
            torch.testing.assert_close(got, want.detach(), atol=1e-6, rtol=1e-5)


def _tiny_mtl2l(**kwargs):
    """MTL2L with 2 units, 2 context features and hypernetworks of width 1, every
    meta-parameter set by hand: identity factors (W_g = diag(N1), U_g = diag(N2)), each
    hypernetwork's first layer reads relu(x[0]), so its batch mean is z = mean relu(x[:, 0])."""
    opt = mtl2l(hidden=2, context_features=2, hyper_width=1, smoothing=0.5, dropout=(0.0, 0.0, 0.0), **kwargs)
    m = opt.init_meta(generator=torch.Generator().manual_seed(0))
    second = {  # (weight column, bias) of each hypernetwork's second layer
        "input1": ([1.0, -1.0], [0.0, 1.0]),
        "recurrent1": ([0.5, 0.5], [0.2, -0.4]),
        "input2": ([1.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]),
        "recurrent2": ([0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.1]),
    }
    with torch.no_grad():
        for name in ("q", "p", "s", "j"):
            getattr(m, name).copy_(torch.eye(2).expand(4, 2, 2))
        m.embed.copy_(torch.tensor([[0.5, -0.2], [0.3, 0.4]]))
        m.input2.copy_(torch.tensor([[0.3, -0.3], [0.2, 0.1], [0.5, 0.5], [-0.4, 0.6]]))
        for name, (weight, bias) in second.items():
            m.hyper[name].first.weight.copy_(torch.tensor([[1.0, 0.0]]))
            m.hyper[name].first.bias.zero_()
            m.hyper[name].second.weight.copy_(torch.tensor(weight).unsqueeze(1))
            m.hyper[name].second.bias.copy_(torch.tensor(bias))
    return opt.with_meta(m.eval())


def test_mtl2l_two_steps_by_hand():
    """The authors' MTL2L (B002d) on one coordinate for two steps, every number by hand:
    Eq. 17 averages ReLU outputs, layer 2 takes a scale and a recurrent weight per gate, and
    only the input (-1) and forget (+1) gates have biases."""
    opt = _tiny_mtl2l()
    params = {"theta": torch.tensor([2.0])}
    state = opt.init(params)
    steps = [  # (inputs, gradient): z = 1 then z = 0
        (torch.tensor([[2.0, 9.0], [0.0, 9.0]]), -0.5),
        (torch.tensor([[-3.0, 0.0], [-1.0, 0.0]]), 1.0),
    ]
    relu = lambda v: max(v, 0.0)  # noqa: E731
    n1, n2, n3, n4 = [0.0, 0.0], [0.0, 0.0], [0.0] * 4, [0.0] * 4
    h1, c1, h2, c2, theta = [0.0, 0.0], [0.0, 0.0], 0.0, 0.0, 2.0
    bias1 = [[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]  # gates i, f, a, o; per unit
    bias2 = [-1.0, 1.0, 0.0, 0.0]
    input2 = [[0.3, -0.3], [0.2, 0.1], [0.5, 0.5], [-0.4, 0.6]]
    for t, (inputs, g) in enumerate(steps):
        z = sum(relu(float(row[0])) for row in inputs) / len(inputs)
        n1 = [0.5 * a + 0.5 * relu(b) for a, b in zip(n1, [z, -z + 1.0])]
        n2 = [0.5 * a + 0.5 * relu(b) for a, b in zip(n2, [0.5 * z + 0.2, 0.5 * z - 0.4])]
        n3 = [0.5 * a + 0.5 * b for a, b in zip(n3, [z, 2 * z, -z, 0.5 * z])]
        n4 = [0.5 * a + 0.5 * b for a, b in zip(n4, [0.1 * z, 0.2 * z, 0.3 * z, 0.4 * z + 0.1])]
        feat = (0.0, 1.0) if g == 1.0 else (math.log(abs(g)) / 10, math.copysign(1.0, g))
        e = [0.5 * feat[0] - 0.2 * feat[1], 0.3 * feat[0] + 0.4 * feat[1]]
        pre1 = [[n1[k] * e[k] + n2[k] * h1[k] + bias1[gate][k] for k in range(2)] for gate in range(4)]
        c1 = [_sigmoid(pre1[1][k]) * c1[k] + _sigmoid(pre1[0][k]) * math.tanh(pre1[2][k]) for k in range(2)]
        h1 = [_sigmoid(pre1[3][k]) * math.tanh(c1[k]) for k in range(2)]
        pre2 = [n3[gate] * (input2[gate][0] * h1[0] + input2[gate][1] * h1[1]) + n4[gate] * h2 + bias2[gate] for gate in range(4)]
        c2 = _sigmoid(pre2[1]) * c2 + _sigmoid(pre2[0]) * math.tanh(pre2[2])
        h2 = _sigmoid(pre2[3]) * math.tanh(c2)
        theta += 0.1 * h2
        for grad_enabled in (True, False):  # the meta-training and meta-test paths
            with torch.set_grad_enabled(grad_enabled):
                new, new_state = opt.update({"theta": torch.tensor([g])}, state, params, StepContext(t, inputs=inputs))
            assert new["theta"].item() == pytest.approx(theta, rel=1e-6), (t, grad_enabled)
            assert new_state.context[1].tolist() == pytest.approx(n2, rel=1e-6, abs=1e-7)
            assert new_state.context[3].tolist() == pytest.approx(n4, rel=1e-6, abs=1e-7)
        params, state = {k: v.detach() for k, v in new.items()}, type(new_state)(*(tuple(v.detach() for v in f) for f in new_state))


def test_mtl2l_eq17_order_is_an_option():
    """smooth_after_relu=False (earlier l2lbench) keeps the average of the raw outputs and
    applies the ReLU to it; the authors' average the ReLU outputs."""
    inputs = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])]  # z = 2, then 0
    got = {}
    for after in (True, False):
        opt = _tiny_mtl2l(smooth_after_relu=after)
        params = {"theta": torch.tensor([0.0])}
        state = opt.init(params)
        for t, x in enumerate(inputs):
            _, state = opt.update({"theta": torch.tensor([1.0])}, state, params, StepContext(t, inputs=x))
        got[after] = state.context[0].tolist()
    # input1's second unit: raw -z + 1 = -1 then 1.
    assert got[True] == pytest.approx([0.5 * 0.5 * 2 + 0.0, 0.5 * 0.5 * 0.0 + 0.5 * 1.0])  # [0.5, 0.5]
    assert got[False] == pytest.approx([0.5, 0.5 * 0.5 * -1.0 + 0.5 * 1.0])  # [0.5, 0.25], ReLU applied on use


def test_mtl2l_authors_initialisation():
    m = bind_fresh(mtl2l()).meta
    assert _within(m.embed, 1 / math.sqrt(20)) and _within(m.input2, 1.0)
    assert m.bias1.tolist() == [-1.0] * 20 + [1.0] * 20 and m.bias2.tolist() == [-1.0, 1.0]
    assert m.bias(m.bias1, 20)[40:].abs().sum() == 0 and m.bias(m.bias2, 1).tolist() == [-1.0, 1.0, 0.0, 0.0]
    assert m.hyper["input2"].second.out_features == 4 and m.hyper["recurrent2"].second.out_features == 4
    hyper = m.hyper["input1"].first  # PyTorch's nn.Linear default
    assert _within(hyper.weight, 1 / math.sqrt(784))
    old = bind_fresh(mtl2l(init_scheme="pytorch", layer2_gates=1)).meta
    assert _within(old.embed, 1 / math.sqrt(2)) and old.bias1.shape == (80,) and old.hyper["input2"].second.out_features == 1


def test_mtl2l_eq17_running_average():
    """N_t = 0.9 N_{t-1} + 0.1 relu(MLP(x_t)) with N_0 = 0 (layer 1; the authors' order), kept
    in the run's state."""
    opt = bind_fresh(mtl2l())
    m = opt.meta
    params = {"w": torch.zeros(4)}
    state = opt.init(params)
    assert all(torch.equal(c, torch.zeros_like(c)) for c in state.context)
    x1, x2 = torch.full((2, 784), 0.5), torch.full((2, 784), -0.25)
    mlp = lambda x: m.hyper["input1"].second(torch.relu(m.hyper["input1"].first(x))).mean(0).relu()  # noqa: E731
    _, state = opt.update({"w": torch.ones(4)}, state, params, StepContext(0, inputs=x1))
    torch.testing.assert_close(state.context[0], 0.1 * mlp(x1).detach())
    _, state = opt.update({"w": torch.ones(4)}, state, params, StepContext(1, inputs=x2))
    torch.testing.assert_close(state.context[0], (0.9 * 0.1 * mlp(x1) + 0.1 * mlp(x2)).detach())


def test_mtl2l_is_context_aware():
    opt = bind_fresh(mtl2l())
    params = {"w": torch.zeros(10)}
    grads = {"w": torch.linspace(-1, 1, 10)}
    a, _ = opt.update(grads, opt.init(params), params, StepContext(0, inputs=torch.zeros(4, 784)))
    b, _ = opt.update(grads, opt.init(params), params, StepContext(0, inputs=torch.ones(4, 784)))
    assert not torch.allclose(a["w"], b["w"])


def test_mtl2l_input_errors():
    opt = bind_fresh(mtl2l())
    params = {"w": torch.zeros(3)}
    with pytest.raises(ValueError, match="no inputs"):
        opt.update({"w": torch.ones(3)}, opt.init(params), params, StepContext(0))
    with pytest.raises(ValueError, match="read 784 input features.*have 3072"):
        opt.update({"w": torch.ones(3)}, opt.init(params), params, StepContext(0, inputs=torch.zeros(2, 3, 32, 32)))
    opt.meta.train()
    with pytest.raises(ValueError, match="needs a generator"):
        opt.update({"w": torch.ones(3)}, opt.init(params), params, StepContext(0, inputs=torch.zeros(2, 784)))


def test_mtl2l_dropout_only_in_training_mode():
    opt = bind_fresh(mtl2l())
    params = {"w": torch.zeros(6)}
    grads, inputs = {"w": torch.linspace(-1, 1, 6)}, torch.randn(8, 784, generator=torch.Generator().manual_seed(0))

    def step(seed):
        ctx = StepContext(0, inputs=inputs, generator=torch.Generator().manual_seed(seed))
        return opt.update(grads, opt.init(params), params, ctx)[0]["w"]

    assert torch.equal(step(0), step(1))  # eval mode: no dropout, generator unused
    opt.meta.train()
    assert torch.equal(step(0), step(0))  # masks come from the generator only
    assert not torch.equal(step(0), step(1))


def test_learned_state_lives_in_state_not_module():
    opt = bind_fresh(lstm())
    params = {"w": torch.zeros(5)}
    s1 = opt.init(params)
    _, s2 = opt.update({"w": torch.ones(5)}, s1, params, StepContext(0))
    assert isinstance(opt, LSTMOptimizer)
    assert not torch.equal(s2.hidden[0], s1.hidden[0])
    assert not any(isinstance(v, torch.Tensor) and 5 in v.shape for v in vars(opt.meta).values())


# --- the fast paths against the straightforward ones ---------------------------------


def test_preprocess_rows_matches_preprocess_gradients():
    g = torch.tensor([0.0, 1.0, -1.0, math.exp(-10), -math.exp(-10), 1e-5, -2e-6, 1e-30, 100.0, -3e4])
    g = torch.cat([g, torch.randn(1000, generator=torch.Generator().manual_seed(0)) * torch.logspace(-8, 2, 1000)])
    for dtype in (torch.float32, torch.float64):
        expected = preprocess_gradients(g.to(dtype)).movedim(-1, 0)
        got = preprocess_rows(g.to(dtype))
        assert got.shape == (2, len(g))
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
        # Seed axis first: (S, n) -> (S, 2, n), each seed as alone.
        torch.testing.assert_close(preprocess_rows(g.to(dtype).view(10, -1))[3], preprocess_rows(g.to(dtype).view(10, -1)[3]))
        # Written into the first rows of a layer's input block: the same numbers, exactly.
        block = torch.full((5, len(g)), 7.0, dtype=dtype)
        assert preprocess_rows(g.to(dtype), out=block[:2]) is not None
        assert torch.equal(block[:2], preprocess_rows(g.to(dtype))) and (block[2:] == 7.0).all()


def _layer_inputs(features, units, dtype, coordinates=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    return make(features, coordinates), make(units, coordinates), make(units, coordinates), make(4 * units, features + units), make(4 * units)


@pytest.mark.parametrize("features,units", [(2, 20), (20, 1), (20, 20)], ids=["layer1", "authors-layer2", "square"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_fast_lstm_layers_match_straightforward(features, units, dtype, tol):
    inputs = _layer_inputs(features, units, dtype)
    upstream = [torch.randn(units, 300, generator=torch.Generator().manual_seed(9), dtype=dtype) for _ in range(2)]
    with torch.no_grad():
        h_ref, c_ref = lstm_layer(*inputs)
        h_in, c_in = lstm_layer_inplace(*inputs)
    torch.testing.assert_close(h_in, h_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(c_in, c_ref, rtol=tol, atol=tol)
    # The fused layer: same forward, and the same gradients for every input.
    grads = []
    for layer in (lstm_layer, lstm_layer_fused):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        h, c = layer(*leaves)
        if layer is lstm_layer_fused:
            torch.testing.assert_close(h.detach(), h_ref, rtol=tol, atol=tol)
            torch.testing.assert_close(c.detach(), c_ref, rtol=tol, atol=tol)
        ((h * upstream[0]).sum() + (c * upstream[1]).sum()).backward()
        grads.append([t.grad for t in leaves])
    for name, ref, got in zip(("x", "h", "c", "weight", "bias"), *grads):
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol * 10, msg=f"gradient of {name}")


def test_fused_lstm_layer_gradcheck_and_partial_needs():
    x, h, c, w, b = (t.requires_grad_(True) for t in _layer_inputs(2, 3, torch.float64, coordinates=7))
    assert torch.autograd.gradcheck(lstm_layer_fused, (x, h, c, w, b))
    # Only the meta-parameters need gradients (meta-training): the rest is skipped.
    h_out, _ = lstm_layer_fused(x.detach(), h.detach(), c.detach(), w, b)
    gw, gb = torch.autograd.grad(h_out.sum(), (w, b))
    hr, _ = lstm_layer(x.detach(), h.detach(), c.detach(), w, b)
    rw, rb = torch.autograd.grad(hr.sum(), (w, b))
    torch.testing.assert_close((gw, gb), (rw, rb))


def test_inplace_lstm_layer_under_vmap():
    batches = [_layer_inputs(2, 4, torch.float32, coordinates=10, seed=s) for s in range(3)]
    stacked = [torch.stack(parts) for parts in zip(*batches)]
    with torch.no_grad():
        h, c = vmap(lstm_layer_inplace)(*stacked)
        for i, parts in enumerate(batches):
            h_ref, c_ref = lstm_layer(*parts)
            torch.testing.assert_close(h[i], h_ref)
            torch.testing.assert_close(c[i], c_ref)


def _reference_lstm_step(opt, grads, state, params):
    """The LSTM optimiser written with lstm_layer and preprocess_gradients only."""
    m = opt.meta
    x = preprocess_gradients(flatten_coordinates(grads)).movedim(-1, 0)
    hidden, cell = [], []
    for k, (weight, h, c) in enumerate(zip(m.weights, state.hidden, state.cell)):
        x, c = lstm_layer(x, h, c, weight, m.bias(k))
        hidden.append(x)
        cell.append(c)
    out = m.head(x.t()).t() if m.head is not None else x
    return flatten_coordinates(params) + opt.output_scale * out.squeeze(0), hidden, cell


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["meta-training path", "meta-test path"])
@pytest.mark.parametrize(
    "kwargs", [{}, {"init_scheme": "pytorch"}, {"head": "linear", "layers": 3}], ids=["authors", "pytorch-init", "linear-3-layers"]
)
def test_lstm_update_matches_straightforward(kwargs, grad_enabled):
    opt = bind_fresh(lstm(**kwargs), seed=5)
    generator = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(16, 20, generator=generator), "b": torch.zeros(16)}
    state = opt.init(params)
    for t in range(4):
        grads = {k: torch.randn(v.shape, generator=generator) * 10.0 ** (-2 * t) for k, v in params.items()}
        with torch.no_grad():
            expected, hidden, cell = _reference_lstm_step(opt, grads, state, params)
        with torch.set_grad_enabled(grad_enabled):
            params, state = opt.update(grads, state, params, StepContext(t))
        torch.testing.assert_close(flatten_coordinates(params).detach(), expected, atol=1e-5, rtol=1e-5)
        for got, want in zip(state.hidden + state.cell, hidden + cell):
            torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=1e-5)
        params = {k: v.detach() for k, v in params.items()}
        state = type(state)(*(tuple(v.detach() for v in field) for field in state))


def test_meta_test_state_does_not_alias_the_previous_state():
    """The in-place path writes states into its own fresh gate matrix, never into its inputs."""
    opt = bind_fresh(lstm())
    params = {"w": torch.zeros(6)}
    with torch.no_grad():
        _, s1 = opt.update({"w": torch.ones(6)}, opt.init(params), params, StepContext(0))
        before = [v.clone() for v in s1.hidden + s1.cell]
        _, s2 = opt.update({"w": -torch.ones(6)}, s1, params, StepContext(1))
    assert all(torch.equal(v, b) for v, b in zip(s1.hidden + s1.cell, before))
    assert not torch.equal(s2.hidden[0], s1.hidden[0])


@pytest.mark.parametrize("factory,mode", [
    (lstm, "seeds as coordinates in groups of 2"),  # 25,450 coordinates per seed, 2**16 per update
    (mtl2l, "batched learner, update per seed"),  # reads the context: synapses differ per seed
])
def test_batched_seeds_like_single_runs(factory, mode, tmp_path):
    """The runner's batched paths for learned optimisers (seeds as coordinates, grouped with
    a remainder group; update seed by seed) give each seed the curves it gets when run alone."""
    task = TaskSpec.from_config({"dataset": {"kind": "synthetic", "n_train": 128, "n_test": 32},
                                 "steps": 6, "batch_size": 16, "eval_every": 3})
    learner = FunctionalLearner(task.learner.build(task.dataset.input_shape, task.dataset.num_classes))
    data = PreparedData.from_splits(task.dataset.load(tmp_path), task, torch.device("cpu"))
    opt = bind_fresh(factory())
    assert learner.num_parameters() == 25450
    assert execution_mode(opt, 3, coordinates=learner.num_parameters(), device=torch.device("cpu")) == mode
    assert execution_mode(opt, 1) == "single" and execution_mode(opt, 3, vectorize=False) == "per seed"
    batched = run_seeds(task, opt, learner, data, [0, 1, 2], device=torch.device("cpu"))
    alone = run_seeds(task, opt, learner, data, [0, 1, 2], device=torch.device("cpu"), vectorize=False)
    for a, b in zip(batched, alone):
        assert a.seed == b.seed and a.eval_steps == b.eval_steps
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5, abs=1e-5)
        assert a.test_loss == pytest.approx(b.test_loss, rel=1e-5, abs=1e-5)


def test_mtl2l_dropout_is_the_documented_mask():
    """Inverted dropout from the run's generator: x * (u >= rate) / (1 - rate), u from the
    Philox stream keyed by one 63-bit draw of the generator."""
    from l2lbench.fastpath.native.dropout import philox_words
    from l2lbench.optimizers.mtl2l import _dropout

    x = torch.randn(64, 30, generator=torch.Generator().manual_seed(0))
    got = _dropout(x, 0.25, torch.Generator().manual_seed(3))
    seed = int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(3)))
    keep = ((philox_words(x.numel(), seed) >> 8).float() * 2.0**-24 >= 0.25).view(x.shape)
    torch.testing.assert_close(got, x * keep / 0.75)
    assert 0 < int((got == 0).sum()) < x.numel()


@pytest.mark.parametrize("meta_loss", ["paper", "authors"])
@pytest.mark.parametrize("factory", [lstm, mtl2l])
def test_meta_gradient_matches_backpropagating_the_losses(factory, meta_loss, tmp_path, monkeypatch):
    """meta_train's first meta-gradient (fused layers, <g_t, theta_t> objective) equals
    back-propagating the summed losses through the straightforward layers: the next
    batch's losses (paper) or the updated learner's on the same batch (authors)."""
    import l2lbench.fastpath.lstm as fast_lstm_module
    from l2lbench.spec.hashing import derive_seed
    from l2lbench.spec.metatraining import MetaTrainingSpec
    from l2lbench.execute.metatrain import meta_train
    from l2lbench.tasks.datasets import normalise
    from l2lbench.execute.metatest import batch_schedule

    spec = MetaTrainingSpec.from_config({
        "tasks": [{"dataset": {"kind": "synthetic", "n_train": 64, "n_test": 16}, "learner": {"kind": "mlp", "hidden": [8]}}],
        "steps": 4, "batch_size": 16, "trials": 1, "unroll": 4, "clip": 1e9, "meta_loss": meta_loss,
    })
    from l2lbench.fastpath.meta_adam import MetaAdam

    captured = []
    real_step = MetaAdam.step

    def spy(self, *args, **kwargs):
        if not captured:
            captured.append([p.grad.clone() for p in self.params.values()])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(MetaAdam, "step", spy)
    meta_train(factory(), spec, data_dir=tmp_path, device=torch.device("cpu"), progress=False)

    # The reference: the first unroll again, straightforward layers and preprocessing.
    for module in (fast_lstm_module,):
        monkeypatch.setattr(module, "lstm_layer_fused", lstm_layer)
        monkeypatch.setattr(module, "gradient_features", lambda g, p: preprocess_gradients(g, p).movedim(-1, 0))
    opt = factory()
    meta = opt.init_meta(generator=torch.Generator().manual_seed(derive_seed(spec.hash, "meta-init"))).train()
    bound = opt.with_meta(meta)
    task = spec.tasks[0]
    learner = FunctionalLearner(task.learner.build(task.dataset.input_shape, task.dataset.num_classes))
    data = PreparedData.from_splits(task.dataset.load(tmp_path), task, torch.device("cpu"))
    params = {k: v.requires_grad_(True) for k, v in learner.init(torch.Generator().manual_seed(derive_seed(spec.hash, 0, "init"))).items()}
    generator = torch.Generator().manual_seed(derive_seed(spec.hash, 0, "optimizer"))
    state = bound.init(params, generator=generator)
    schedule = batch_schedule(len(data.train_labels), task.steps + 1, task.batch_size, derive_seed(spec.hash, 0, "data"))
    total = 0.0
    for t in range(task.steps + 1):
        inputs = normalise(data.train_images[schedule[t]], data.mean, data.std)
        loss = learner.loss(params, inputs, data.train_labels[schedule[t]])
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), retain_graph=True)))
        if t > 0 and meta_loss == "paper":
            total = total + loss
        if t < task.steps:
            params, state = bound.update(grads, state, params, StepContext(t, inputs=inputs, loss=loss.detach(), generator=generator))
            if meta_loss == "authors":
                total = total + learner.loss(params, inputs, data.train_labels[schedule[t]])
    expected = torch.autograd.grad(total, list(meta.parameters()))
    assert len(expected) == len(captured[0])
    for got, want in zip(captured[0], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
