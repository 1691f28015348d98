"""The LSTM optimiser and MTL2L against values computed by hand and straightforward
reference implementations (the fast paths compose matrices; these do not)."""

from __future__ import annotations

import math

import pytest
import torch

from l2lbench.errors import UsageError
from l2lbench.optim.base import StepContext
from l2lbench.optim.learned import bind_fresh, flatten_coordinates, preprocess_gradients
from l2lbench.optimizers.lstm import LSTMOptimizer, lstm
from l2lbench.optimizers.mtl2l import FAMILIES, mtl2l


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


def test_one_lstm_step_by_hand():
    """A 1-layer LSTM with one unit (authors' head, layers=1): every number by hand."""
    opt = lstm(layers=1, hidden=1, output_scale=0.1)
    module = opt.init_meta(generator=torch.Generator().manual_seed(0))
    # weight rows: [x0, x1, h]; columns: gates i, f, a, o.
    w = [[0.1, 0.2, 0.3, 0.4], [0.5, -0.6, 0.7, -0.8], [0.9, 1.0, -1.1, 1.2]]
    b = [0.01, 0.02, 0.03, 0.04]
    with torch.no_grad():
        module.weights[0].copy_(torch.tensor(w).t())
        module.biases[0].copy_(torch.tensor(b))
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
    for weight, bias, (n_in, n_out) in zip(module.weights, module.biases, zip(module.sizes, module.sizes[1:])):
        cell = torch.nn.LSTMCell(n_in, n_out)
        with torch.no_grad():
            cell.weight_ih.copy_(weight[:, :n_in])
            cell.weight_hh.copy_(weight[:, n_in:])
            cell.bias_ih.copy_(bias)
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


def test_lstm_architecture_and_bias_offsets():
    opt = bind_fresh(lstm())
    assert opt.meta.sizes == [2, 20, 1]  # authors: second layer has one unit, no head
    assert opt.meta.head is None
    bias = opt.meta.biases[0]
    bound = 2 / math.sqrt(20)  # sum of two U(-1/sqrt(H), 1/sqrt(H)) bias vectors
    assert (bias[:20] < -1 + bound + 1e-6).all() and (bias[:20] > -1 - bound - 1e-6).all()  # input gate -1
    assert (bias[20:40] > 1 - bound - 1e-6).all() and (bias[20:40] < 1 + bound + 1e-6).all()  # forget gate +1
    textbook = bind_fresh(lstm(head="linear"))
    assert textbook.meta.sizes == [2, 20, 20] and textbook.meta.head is not None


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


def _reference_mtl2l_step(opt, grads, state, params, inputs):
    """MTL2L written out per gate and per coordinate (no composition, no folding)."""
    m = opt.meta
    x = inputs.reshape(inputs.shape[0], -1)
    raw = [m.hyper[f].second(torch.relu(m.hyper[f].first(x))).mean(0) for f in FAMILIES]
    smoothed = [opt.smoothing * prev + (1 - opt.smoothing) * r for prev, r in zip(state.context, raw)]
    gamma, omega = torch.relu(smoothed[0]), torch.relu(smoothed[1])
    g = flatten_coordinates(grads)
    xe = preprocess_gradients(g) @ m.embed.t()  # Linear(2, 20) without bias
    h1, c1 = state.hidden[0].t(), state.cell[0].t()  # (coordinates, units) here
    h2, c2 = state.hidden[1].t(), state.cell[1].t()
    H = m.hidden
    pre1 = []
    for gate in range(4):
        W = m.q[gate] @ torch.diag(gamma) @ m.p[gate].t()
        U = m.s[gate] @ torch.diag(omega) @ m.j[gate].t()
        pre1.append(xe @ W.t() + h1 @ U.t() + m.bias1[gate * H : (gate + 1) * H])
    i, f, a, o = pre1
    c1 = torch.sigmoid(f) * c1 + torch.sigmoid(i) * torch.tanh(a)
    h1 = torch.sigmoid(o) * torch.tanh(c1)
    pre2 = [smoothed[2] * (h1 @ m.input2[gate]).unsqueeze(1) + smoothed[3] * h2 + m.bias2[gate] for gate in range(4)]
    i, f, a, o = pre2
    c2 = torch.sigmoid(f) * c2 + torch.sigmoid(i) * torch.tanh(a)
    h2 = torch.sigmoid(o) * torch.tanh(c2)
    return flatten_coordinates(params) + 0.1 * h2.squeeze(1), smoothed


@pytest.mark.parametrize("smoothing", [0.9, 0.0])
def test_mtl2l_matches_straightforward_implementation(smoothing):
    opt = bind_fresh(mtl2l(smoothing=smoothing), seed=4)
    generator = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(32, 784, generator=generator) * 0.05, "b": torch.zeros(32)}
    state = opt.init(params)
    for t in range(3):
        inputs = torch.randn(16, 1, 28, 28, generator=generator)
        grads = {k: torch.randn(v.shape, generator=generator) * 0.01 for k, v in params.items()}
        expected, smoothed = _reference_mtl2l_step(opt, grads, state, params, inputs)
        params, state = opt.update(grads, state, params, StepContext(t, inputs=inputs))
        torch.testing.assert_close(flatten_coordinates(params), expected.detach(), atol=1e-5, rtol=1e-5)
        for got, want in zip(state.context, smoothed):
            torch.testing.assert_close(got, want.detach(), atol=1e-6, rtol=1e-5)


def test_mtl2l_eq17_running_average():
    """N_t = 0.9 N_{t-1} + 0.1 MLP(x_t) with N_0 = 0, kept in the run's state."""
    opt = bind_fresh(mtl2l())
    m = opt.meta
    params = {"w": torch.zeros(4)}
    state = opt.init(params)
    assert all(torch.equal(c, torch.zeros_like(c)) for c in state.context)
    x1, x2 = torch.full((2, 784), 0.5), torch.full((2, 784), -0.25)
    mlp = lambda x: m.hyper["input1"].second(torch.relu(m.hyper["input1"].first(x))).mean(0)  # noqa: E731
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
