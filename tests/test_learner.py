"""The learner's seed-batched gradients and the runner's minibatch gather.

``seed_gradients`` replaces ``vmap(grad(loss))`` on the runner's hot path, so it must give
each seed exactly its own gradient, for every learner architecture the tasks build and
for modules it cannot batch (the ``vmap`` fallback).
"""

from __future__ import annotations

import pytest
import torch
from l2lbench.tasks.datasets import normalise
from l2lbench.tasks.learners import CNN, MLP
from torch import nn
from torch.func import grad_and_value, vmap

from l2lbench.execute.learner import FunctionalLearner
from l2lbench.fastpath.learner import plain_sequential
from l2lbench.plugin.tree import tree_stack
from l2lbench.execute.metatest import minibatch


class _Residual(nn.Module):
    """Not a Sequential: the stacked forward cannot run it, vmap must."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 16, device="meta")
        self.head = nn.Linear(16, 3, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.head(x + torch.tanh(self.body(x)))


LEARNERS = {
    "mlp-relu": lambda: MLP(hidden=(8,)).build((1, 4, 4), 3),
    "mlp-tanh-deep": lambda: MLP(hidden=(8, 5), activation="tanh").build((1, 4, 4), 3),
    "mlp-linear": lambda: MLP(hidden=()).build((1, 4, 4), 3),
    "cnn": lambda: CNN(channels=(3, 4)).build((2, 8, 8), 3),
    "not-sequential": _Residual,
}


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_seed_gradients_equal_each_seeds_own_gradient(name):
    module = LEARNERS[name]()
    learner = FunctionalLearner(module)
    seeds, batch = 3, 5
    params = tree_stack([learner.init(torch.Generator().manual_seed(s)) for s in range(seeds)])
    shape = (1, 4, 4) if name != "cnn" else (2, 8, 8)
    inputs = torch.randn(seeds, batch, *shape, generator=torch.Generator().manual_seed(9))
    labels = torch.randint(0, 3, (seeds, batch), generator=torch.Generator().manual_seed(10))

    grads, losses = learner.seed_gradients(params, inputs, labels)

    assert plain_sequential(module) == (name != "not-sequential")
    assert losses.shape == (seeds,) and losses.grad_fn is None
    for s in range(seeds):
        own = {k: v[s] for k, v in params.items()}
        expected_grads, expected_loss = grad_and_value(learner.loss)(own, inputs[s], labels[s])
        torch.testing.assert_close(losses[s], expected_loss, rtol=1e-5, atol=1e-6)
        for key, value in expected_grads.items():
            assert grads[key].grad_fn is None
            torch.testing.assert_close(grads[key][s], value, rtol=1e-5, atol=1e-6, msg=f"{name} seed {s} {key}")


def test_seed_losses_match_vmap_of_the_loss():
    learner = FunctionalLearner(CNN(channels=(2,)).build((1, 6, 6), 4))
    params = tree_stack([learner.init(torch.Generator().manual_seed(s)) for s in range(2)])
    inputs = torch.randn(2, 7, 1, 6, 6)
    labels = torch.randint(0, 4, (2, 7))
    torch.testing.assert_close(learner.seed_losses(params, inputs, labels), vmap(learner.loss)(params, inputs, labels))


def test_unsupported_layer_options_fall_back_to_vmap():
    assert not plain_sequential(nn.Sequential(nn.Flatten(0, -1), nn.Linear(4, 2)))
    assert not plain_sequential(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular")))
    assert not plain_sequential(nn.Sequential(nn.Conv2d(1, 1, 3, padding="same")))
    assert not plain_sequential(nn.Sequential(nn.LayerNorm(4)))
    assert not plain_sequential(nn.Sequential(nn.Linear(4, 2)))  # no flatten first
    assert not plain_sequential(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Flatten()))


def test_minibatch_gathers_and_normalises_any_index_shape():
    images = torch.randint(0, 256, (20, 1, 3, 3), dtype=torch.uint8)
    labels = torch.arange(20) % 7
    indices = torch.tensor([[3, 19, 0], [5, 5, 11]])
    inputs, batch_labels = minibatch(images, labels, indices, 0.25, 0.5)
    assert inputs.shape == (2, 3, 1, 3, 3) and batch_labels.shape == (2, 3)
    for s in range(2):
        for b in range(3):
            i = int(indices[s, b])
            torch.testing.assert_close(inputs[s, b], (images[i].float() / 255 - 0.25) / 0.5, rtol=0, atol=0)
            assert batch_labels[s, b] == labels[i]


def test_normalise_leaves_a_float_input_alone():
    images = torch.full((2, 2), 51.0)
    out = normalise(images, 0.1, 0.2)
    assert torch.equal(images, torch.full((2, 2), 51.0))
    torch.testing.assert_close(out, torch.full((2, 2), (0.2 - 0.1) / 0.2))


@pytest.mark.parametrize("name", ["mlp-relu", "mlp-tanh-deep", "cnn"])
def test_plain_forward_equals_functional_call(name):
    from torch.func import functional_call

    module = LEARNERS[name]()
    learner = FunctionalLearner(module)
    assert learner.plain
    params = learner.init(torch.Generator().manual_seed(0))
    inputs = torch.randn(6, *((2, 8, 8) if name == "cnn" else (1, 4, 4)))
    torch.testing.assert_close(learner.logits(params, inputs), functional_call(module, params, (inputs,)), rtol=0, atol=0)
