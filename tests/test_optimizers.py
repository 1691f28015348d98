"""Each reference optimiser is numerically torch.optim's, on the same run (to 1e-6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l2lbench.errors import ConfigError
from l2lbench.plugin.base import StepContext
from l2lbench.plugin.registry import OptimizerRegistry
from l2lbench.plugin.torch_bridge import from_torch

# (entry, hyperparameters, torch class, torch kwargs): variants exercise every branch.
EQUIVALENCE = [
    ("sgd", {}, torch.optim.SGD, {"lr": 0.01}),
    ("sgd", {"weight_decay": 0.1}, torch.optim.SGD, {"lr": 0.01, "weight_decay": 0.1}),
    ("momentum", {}, torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    ("momentum", {"dampening": 0.3}, torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "dampening": 0.3}),
    ("momentum", {"nesterov": True}, torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    ("adam", {}, torch.optim.Adam, {"lr": 0.01}),
    ("adam", {"weight_decay": 0.05, "amsgrad": True}, torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.05, "amsgrad": True}),
    ("adamw", {}, torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.01}),
    ("rmsprop", {}, torch.optim.RMSprop, {"lr": 0.01}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.01}, torch.optim.RMSprop,
     {"lr": 0.01, "centered": True, "momentum": 0.5, "weight_decay": 0.01}),
]


def _problem():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(100, 64, 20, generator=g)
    y = torch.randint(0, 5, (100, 64), generator=g)
    return model, x, y


@pytest.mark.parametrize("entry,hparams,torch_class,torch_kwargs", EQUIVALENCE,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(EQUIVALENCE)])
def test_matches_torch_optim(entry, hparams, torch_class, torch_kwargs):
    registry = OptimizerRegistry.default(entry_points=False)
    optimizer = registry.resolve(entry).entry.factory(**hparams)

    def check(t, params, model):
        for n, p in model.named_parameters():
            diff = (params[n] - p.detach()).abs().max().item()
            assert diff <= 1e-6, f"{entry} {hparams} step {t}: {n} differs by {diff:.3g}"

    _lockstep(optimizer, lambda ps: torch_class(ps, **torch_kwargs), steps=100, after_step=check)


def _lockstep(optimizer, make_reference, steps, after_step=None):
    """Step the functional optimiser and a torch.optim reference side by side.

    Both sides get the same gradients (torch's, at torch's parameters), so any difference
    is the update rule's own rounding; ``after_step(t, params, model)`` compares them.
    """
    model, x, y = _problem()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = optimizer.init(params)
    reference = make_reference(model.parameters())
    for t in range(steps):
        reference.zero_grad()
        F.cross_entropy(model(x[t]), y[t]).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        reference.step()
        params, state = optimizer.update(grads, state, params, StepContext(step=t))
        assert list(params) == [n for n, _ in model.named_parameters()]
        if after_step is not None:
            after_step(t, params, model)
    return params, model


def test_whole_run_drift_stays_below_1e6():
    """Without re-syncing, 100 Adam steps on the same batches stay within 1e-6 of torch."""
    optimizer = OptimizerRegistry.default(entry_points=False).resolve("adam").build()
    model, x, y = _problem()
    functional = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = optimizer.init(functional)
    reference = torch.optim.Adam(model.parameters(), lr=0.01)
    for t in range(len(x)):
        reference.zero_grad()
        F.cross_entropy(model(x[t]), y[t]).backward()
        reference.step()
        loss_fn = lambda p: F.cross_entropy(torch.func.functional_call(model, p, (x[t],)), y[t])  # noqa: E731
        grads = torch.func.grad(loss_fn)(functional)
        functional, state = optimizer.update(grads, state, functional, StepContext(step=t))
    worst = max((functional[n] - p.detach()).abs().max().item() for n, p in model.named_parameters())
    assert worst <= 1e-6


def test_torch_bridge_is_torch_itself():
    factory = from_torch(torch.optim.Adagrad, lr=0.05)
    params, model = _lockstep(factory(), lambda ps: torch.optim.Adagrad(ps, lr=0.05), steps=10)
    for n, p in model.named_parameters():
        assert torch.equal(params[n], p.detach())


def test_torch_bridge_refuses_closure_optimizers():
    with pytest.raises(ConfigError, match="LBFGS needs a closure"):
        from_torch(torch.optim.LBFGS)


def test_torch_bridge_validates_arguments_up_front():
    with pytest.raises(ConfigError, match="Adagrad"):
        from_torch(torch.optim.Adagrad, lr=-1.0)()


@pytest.mark.parametrize(
    "entry,hparams,message",
    [
        ("sgd", {"lr": -0.1}, "invalid lr: -0.1"),
        ("sgd", {"lr": "fast"}, "invalid lr: 'fast'"),
        ("momentum", {"momentum": -1}, "invalid momentum: -1"),
        ("sgd", {"nesterov": True}, "invalid nesterov=True with momentum=0.0"),
        ("adam", {"beta1": 1.0}, "invalid beta1: 1.0"),
        ("adam", {"beta2": -0.5}, "invalid beta2: -0.5"),
        ("adamw", {"weight_decay": -1}, "invalid weight_decay: -1"),
        ("rmsprop", {"alpha": 2}, "invalid alpha: 2"),
        ("adam", {"learning_rate": 0.1}, "unknown hyperparameter(s) 'learning_rate' for optimizer 'adam'"),
    ],
)
def test_bad_hyperparameters_name_the_value(entry, hparams, message):
    from l2lbench.spec.optimizer import OptimizerSpec

    registry = OptimizerRegistry.default(entry_points=False)
    with pytest.raises(ConfigError) as info:
        registry.resolve(OptimizerSpec(entry, tuple(hparams.items()))).build()
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("entry", ["sgd", "momentum", "adam"])
def test_meta_gradient_wrt_learning_rate_matches_finite_difference(entry):
    """d(loss after 5 steps)/d(lr) by differentiating through the updates themselves."""
    from l2lbench.testing.conformance import Quadratic

    factory = OptimizerRegistry.default(entry_points=False).resolve(entry).entry.factory
    problem = Quadratic.make(dtype=torch.float64)

    def final_loss(lr):
        optimizer = factory(lr=lr)
        params = {k: v.double() for k, v in problem.init().items()}
        state = optimizer.init(params)
        for t in range(5):
            params, state = optimizer.update(problem.grads(params), state, params, StepContext(step=t))
        return problem.loss(params)

    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    (analytic,) = torch.autograd.grad(final_loss(lr), lr)
    eps = 1e-6
    numeric = (final_loss(0.05 + eps) - final_loss(0.05 - eps)) / (2 * eps)
    assert analytic.item() == pytest.approx(numeric.item(), rel=1e-5)
    assert analytic.item() < 0  # a larger step helps on this convex problem


def test_hyperparameter_defaults_enter_the_config_hash():
    registry = OptimizerRegistry.default(entry_points=False)
    from l2lbench.spec.optimizer import OptimizerSpec

    default = registry.resolve("adam")
    explicit = registry.resolve(OptimizerSpec("adam", (("lr", 0.01),)))
    other = registry.resolve(OptimizerSpec("adam", (("lr", 0.001),)))
    assert default.hash == explicit.hash  # spelling the default changes nothing
    assert default.hash != other.hash
    assert other.name == "adam-lr0.001"
