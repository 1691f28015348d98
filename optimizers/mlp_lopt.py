"""A per-parameter MLP learned optimiser after the small fully connected learned optimiser
of Metz et al. (2022), "Practical tradeoffs between memory, compute, and performance in
learned optimizers" (``small_fc_lopt`` in google/learned_optimization and PyLO).

Every learner coordinate gets the same small MLP, fed with features of that coordinate
normalised over its tensor. With K momentum decays ``beta_k``, second-moment decay
``beta_v`` and step count ``t`` (updates already taken), for a learner tensor with
parameter ``p`` and gradient ``g``::

    m_k <- beta_k m_k + (1 - beta_k) g          v <- beta_v v + (1 - beta_v) g^2
    r    = 1 / sqrt(v + rsqrt_eps)
    f    = [g, p, m_1..m_K, v, r, m_1 r..m_K r]                  (4 + 2K per coordinate)
    f_i <- f_i / sqrt(mean over the tensor of f_i^2 + norm_eps)  (each feature, each tensor)
    x    = [f, tanh(t / s_1), ..., tanh(t / s_J)]                (time: the same in the tensor)
    d, m = MLP(x)                              (Linear -> ReLU per hidden layer -> Linear(2))
    p   <- p - d exp(exp_mult m) step_mult

Choices and their sources (M: Metz et al. 2022, its description of the per-parameter MLP
learned optimiser and of its input features; R: the public reference implementation,
google/learned_optimization ``learned_optimizers/mlp_lopt.py`` and
``adafac_mlp_lopt.py``, read to learn, not copied; L: l2lbench's own):

* inputs: the parameter, the gradient, momentum at several decays, a second-moment
  accumulator with its reciprocal square root and the momenta times it (Adam-like
  ratios), and step-count features ``tanh(t / s)`` over several decades of ``s`` (M).
  Decays 0.1, 0.5, 0.9, 0.99, 0.999 (R has 0.9999 too: useless at l2lbench's horizons
  of 100 to 1000 steps; reachable through ``momentum_decays``); second-moment decay 0.999
  and timescales 1, 3, ..., 30000, 100000 (R);
* each feature is divided by its root-mean-square over the tensor, the "second moment
  normalisation" (M), with ``norm_eps`` 1e-5 inside the square root (R); the step-count
  features are the same for every coordinate and are not normalised (M, R);
* the MLP: two hidden layers of 32 ReLU units and two outputs, a direction ``d`` and a
  log-magnitude ``m``; the step ``d exp(exp_mult m) step_mult`` with both multipliers
  0.001, so a fresh optimiser takes tiny steps (M, R); the step is subtracted (R);
* initialisation: weights from a normal distribution truncated at two standard deviations,
  standard deviation 1/sqrt(fan-in), biases zero (R, the default of its MLP library);
* accumulators are updated before the features are read, so the first step already sees
  the current gradient in every momentum (R); no bias correction (M, R);
* ``rsqrt_eps`` 1e-6 (R's value for its second-moment accumulator).

Not followed: R's step-count features are ``tanh(t / s - 1)``; here they are
``tanh(t / s)`` (L): each starts at zero and saturates after about ``s`` steps. Like R's
per-parameter MLP, the rule is not told the run's horizon. R's meta-learned accumulator decays and
Adafactor-style factored accumulators (``adafac_mlp_lopt``) are not implemented; the
decays here are fixed hyperparameters. Meta-training is l2lbench's one implementation
(truncated back-propagation by default, ES or PES as the meta-training's ``estimator``
says) on the suite's tasks, not the paper's distribution of tasks. The paper's section numbers are not given here: no
copy of the paper is kept beside l2lbench's other references.

Per-run state (momenta, second moments, the step count) lives in :class:`MLPLOptState`;
the meta-parameters never change during a run. The per-tensor normalisation makes the
rule depend on which coordinates share a tensor, so it is not ``coordinatewise``: with
several seeds the runner calls ``update`` under ``torch.func.vmap`` (``batchable``). It
reads nothing of the step context and draws no random numbers. It is written once, out of
place, for meta-training (which differentiates through it), meta-test and evolution
strategies alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from l2lbench.errors import ConfigError
from l2lbench.plugin.base import Params, StepContext
from l2lbench.plugin.factory import from_dataclass
from l2lbench.plugin.learned import LearnedOptimizer
from l2lbench.plugin.validate import check_range

DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999)
TIMESCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0)


class MLPLOptState(NamedTuple):
    count: Tensor  # updates taken so far (int64 scalar): the step-count features read it
    momentum: Params  # per learner tensor, (*shape, decays)
    second_moment: Params  # per learner tensor, its shape


class MLPLOptMeta(nn.Module):
    """The meta-parameters: the MLP's linear layers, ``layers[k]`` an ``nn.Linear``.

    The first layer's input columns are the normalised features, then the step-count
    features."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:]))


def feature_count(decays: int) -> int:
    """The normalised features per coordinate: g, p, K momenta, v, rsqrt(v), K ratios."""
    return 4 + 2 * decays


def _positive_ints(name: str, value: Any) -> tuple[int, ...]:
    ok = isinstance(value, (tuple, list)) and len(value) > 0
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok:
        raise ConfigError(f"invalid {name}: {value!r} (expected a non-empty list of positive integers, e.g. [32, 32])")
    return tuple(value)


def _numbers(name: str, value: Any, low: float, high: float, *, low_open: bool, high_open: bool) -> tuple[float, ...]:
    if not isinstance(value, (tuple, list)) or not value:
        raise ConfigError(f"invalid {name}: {value!r} (expected a non-empty list of numbers)")
    for v in value:
        _finite(name, v, low, high, low_open=low_open, high_open=high_open)
    return tuple(float(v) for v in value)


def _finite(name: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False) -> None:
    check_range(name, value, low, high, low_open=low_open, high_open=high_open)
    if not math.isfinite(float(value)):
        raise ConfigError(f"invalid {name}: {value!r} (expected a finite number)")


@dataclass(frozen=True)
class MLPLOpt(LearnedOptimizer):
    """Per-parameter MLP learned optimiser (hyperparameters; meta-parameters via ``meta``)."""

    # Not coordinatewise (the features are normalised per tensor), so batched seeds run
    # under vmap: no random draws, no data-dependent Python control flow. It counts its own
    # steps and reads nothing of the context (context_free, which only coordinatewise rules
    # put to use).
    batchable: ClassVar[bool] = True
    context_free: ClassVar[bool] = True

    hidden: tuple[int, ...] = (32, 32)
    momentum_decays: tuple[float, ...] = DECAYS
    rms_decay: float = 0.999
    timescales: tuple[float, ...] = TIMESCALES
    step_mult: float = 0.001
    exp_mult: float = 0.001
    norm_eps: float = 1e-5
    rsqrt_eps: float = 1e-6
    meta: MLPLOptMeta | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Lists (TOML, --set) become tuples: the rule stays hashable and its fields compare.
        object.__setattr__(self, "hidden", _positive_ints("hidden", self.hidden))
        decays = _numbers("momentum_decays", self.momentum_decays, 0.0, 1.0, low_open=False, high_open=True)
        object.__setattr__(self, "momentum_decays", decays)
        _finite("rms_decay", self.rms_decay, 0.0, 1.0, high_open=True)
        timescales = _numbers("timescales", self.timescales, 0.0, math.inf, low_open=True, high_open=False)
        object.__setattr__(self, "timescales", timescales)
        _finite("step_mult", self.step_mult, 0.0, low_open=True)
        _finite("exp_mult", self.exp_mult, 0.0)
        _finite("norm_eps", self.norm_eps, 0.0, low_open=True)
        _finite("rsqrt_eps", self.rsqrt_eps, 0.0, low_open=True)

    @property
    def input_size(self) -> int:
        return feature_count(len(self.momentum_decays)) + len(self.timescales)

    def init_meta(self, *, generator: torch.Generator) -> MLPLOptMeta:
        module = MLPLOptMeta([self.input_size, *self.hidden, 2])
        with torch.no_grad():
            for layer in module.layers:
                std = 1.0 / math.sqrt(layer.in_features)
                nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std, generator=generator)
                layer.bias.zero_()
        return module

    def init(self, params: Params, *, generator: torch.Generator | None = None) -> MLPLOptState:
        # Accumulators in each tensor's own dtype, as a hand-designed rule keeps them.
        k = len(self.momentum_decays)
        device = next(iter(params.values())).device
        return MLPLOptState(
            count=torch.zeros((), dtype=torch.int64, device=device),
            momentum={name: p.new_zeros((*p.shape, k)) for name, p in params.items()},
            second_moment={name: torch.zeros_like(p) for name, p in params.items()},
        )

    def update(self, grads: Params, state: MLPLOptState, params: Params, context: StepContext) -> tuple[Params, MLPLOptState]:
        """One step for every learner tensor (see the module docstring for the formulas)."""
        module = self.module
        first = module.layers[0]
        dtype = first.weight.dtype
        features = feature_count(len(self.momentum_decays))
        # The step-count features are the same for every coordinate: their share of the first
        # layer, W_time tanh(t / s) + b, is one bias vector for all tensors.
        time = torch.tanh(state.count.to(dtype) / torch.tensor(self.timescales, dtype=dtype, device=state.count.device))
        first_bias = torch.addmv(first.bias, first.weight[:, features:], time)
        new_params, momentum, second = {}, {}, {}
        for name, p in params.items():
            g = grads[name]
            decays = torch.tensor(self.momentum_decays, dtype=g.dtype, device=g.device)
            m = decays * state.momentum[name] + (1 - decays) * g.unsqueeze(-1)
            v = self.rms_decay * state.second_moment[name] + (1 - self.rms_decay) * g * g
            step = self._step(g, p, m, v, first_bias)
            new_params[name] = p - step.view(p.shape).to(p.dtype)
            momentum[name], second[name] = m, v
        return new_params, MLPLOptState(count=state.count + 1, momentum=momentum, second_moment=second)

    def _step(self, g: Tensor, p: Tensor, m: Tensor, v: Tensor, first_bias: Tensor) -> Tensor:
        """``d exp(exp_mult m) step_mult`` for one tensor's coordinates, as a flat vector.

        Coordinates are rows and features columns, (coordinates, features): under ``vmap``
        the seeds then stack as more rows of one matrix product, where the transposed
        layout would have every product copy its batched operand into place."""
        layers = self.module.layers
        dtype = first_bias.dtype
        n = p.numel()
        k = len(self.momentum_decays)
        m = m.reshape(n, k)
        ratio = torch.rsqrt(v.reshape(n, 1) + self.rsqrt_eps)
        x = torch.cat([g.reshape(n, 1), p.reshape(n, 1), m, v.reshape(n, 1), ratio, m * ratio], dim=1).to(dtype)
        scale = torch.rsqrt((x * x).mean(dim=0) + self.norm_eps)  # per feature, over the tensor
        x = x * scale
        for index, layer in enumerate(layers):
            weight = layer.weight[:, : x.shape[1]] if index == 0 else layer.weight
            bias = first_bias if index == 0 else layer.bias
            x = torch.nn.functional.linear(x, weight, bias)
            if index < len(layers) - 1:
                x = torch.relu(x)
        direction, magnitude = x[:, 0], x[:, 1]
        return direction * torch.exp(magnitude * self.exp_mult) * self.step_mult


# The registry's factory: the fields carry the defaults (``meta`` is bound after
# meta-training and is never a hyperparameter).
mlp_lopt = from_dataclass(MLPLOpt, "Per-parameter MLP learned optimiser (Metz et al. 2022); learned, meta-train it first.")
