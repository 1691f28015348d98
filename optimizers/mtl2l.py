"""MTL2L, the context-aware neural optimiser of Kuo et al. (2020), "MTL2L: A Context Aware
Neural Optimiser" (AutoML workshop at ICML 2020), Section 3, Table 1 right, Appendix B.5.

The LSTM optimiser's equations (see :mod:`l2lbench.optimizers.lstm`), but every synapse is
rebuilt at every learner step t in SVD form from the learner's current input batch x_t::

    W_t = Q diag(N1(x_t)) P^T        (input synapse, Eq. 13)
    U_t = S diag(N2(x_t)) J^T        (recurrent synapse, Eq. 14)

Q, P, S, J are random orthonormal matrices drawn once (:func:`haar_orthogonal`, seeded
from the meta-initialisation generator) and never trained: they are module *buffers*, so a
checkpoint restores them exactly. The diagonals come from hypernetworks N that read x_t
(the flattened, normalised images; 784 features for the paper's data).

Every choice and where it comes from (K: the paper; C: the authors' public code,
Nic5472K/AutoML2020_ICML_MTL2L, file ``B002d_AutoML_MTL2L.py``; L: l2lbench's own).
The defaults follow C wherever the paper is silent; the earlier l2lbench choices stay
reachable as options:

* the two preprocessed gradient features (p = 10) first pass through a learned
  Linear(2, hidden) without bias, then through the SVD synapse (C);
* layer 1 has ``hidden`` (20) units; each of its 4 gates (input, forget, cell, output) has
  its own fixed factors, and one hypernetwork per synapse family gives the diagonal shared
  by the 4 gates: N1 for the input synapses, N2 for the recurrent ones (C);
* a hypernetwork is Linear(features, 32) -> ReLU -> Linear(32, out), averaged over the
  batch (C); layer 1's diagonals pass through a ReLU (non-negative singular values, C);
* layer 2 has a single unit whose hidden state, scaled by 0.1, is the update (C, as in the
  LSTM optimiser). Its input synapse for gate g is a learned ``hidden``-vector scaled by
  the g-th output of a third hypernetwork, its recurrent weight for gate g the g-th output
  of a fourth: ``layer2_gates = 4`` values each (C, the default); ``layer2_gates = 1``
  shares one value between the four gates (L, l2lbench before it followed C);
* Eq. 17 of Appendix B.5.3 smooths the hypernetwork outputs across learner steps,
  ``N_t = 0.9 N_{t-1} + 0.1 MLP(x_t)`` with ``N_0 = 0``. For layer 1 the running average
  is of the ReLU's output (``smooth_after_relu = True``, C, the default); ``False``
  smooths first and applies the ReLU to the average (L, earlier). The paper used Eq. 17
  for multi-task meta-training (Scenario 2); it is on by default here (``smoothing =
  0.9``, C does it in every script); ``smoothing = 0`` gives Scenario 1's plain
  ``N_t = MLP(x_t)``. The running averages are per-run state, never module attributes;
* dropout inside each hypernetwork during meta-training only: 0.1 on its input, 0.25 after
  the ReLU, 0.1 on its output (``dropout``, C), with masks drawn from the run's generator
  (through a Philox stream it seeds: :mod:`l2lbench.fastpath.native.dropout`; L);
* ``init_scheme = "authors"`` (the default, C): the embedding from U(+-1/sqrt(hidden)),
  layer 2's input vectors from U(+-1), the hypernetworks from PyTorch's ``nn.Linear``
  defaults (C's ``init_weight`` meant to scale them by 0.01 but matches no parameter, so
  C runs with the defaults too), and biases only on the input and forget gates of both
  layers, starting at -1 and +1; the cell and output gates have none.
  ``init_scheme = "pytorch"`` (L, earlier): every linear map from PyTorch's defaults, a
  trained bias on every gate, layer 1's from U(+-1/sqrt(hidden)) with the -1/+1 offsets
  added, layer 2's from U(+-1), layer 2's input vectors from U(+-1/sqrt(hidden));
* not followed: C adds decaying noise to the learner's parameters after every
  meta-training update (Appendix B.5.3); that is a meta-training option here
  (``param_noise``), off by default, because the paper's Algorithm 1 has no such step.

Because the synapses depend on the batch but not on the coordinate, each step first
composes the small per-gate matrices (folding the Linear(2, hidden) into W_t) and then does
one matrix product over all |theta| coordinates, instead of multiplying every coordinate
through Q, diag and P^T separately; the result is the same to float rounding. The LSTM
layers and the hypernetworks are written here in their reference form; ``update`` asks the
fast path for faster forms of both (:mod:`l2lbench.fastpath.lstm`, with the composed
synapses as the layers' weights, and :mod:`l2lbench.fastpath.mtl2l`), equal to the
reference to float rounding (``tests/test_fastpath.py``; why: ``docs/performance.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2lbench.fastpath import lstm as fast_lstm
from l2lbench.fastpath import mtl2l as fast_mtl2l
from l2lbench.fastpath.native.dropout import dropout as philox_dropout
from l2lbench.plugin.base import Params, StepContext
from l2lbench.plugin.factory import from_dataclass
from l2lbench.plugin.learned import (
    LearnedOptimizer,
    flatten_coordinates,
    preprocess_gradients,
    uniform_,
    unflatten_coordinates,
)
from l2lbench.plugin.validate import check_range
from l2lbench.optimizers.lstm import lstm_layer

FAMILIES = ("input1", "recurrent1", "input2", "recurrent2")
GATES = 4
INITS = ("authors", "pytorch")


class MTL2LState(NamedTuple):
    hidden: tuple[Tensor, Tensor]  # layer 1 (hidden, coordinates), layer 2 (1, coordinates)
    cell: tuple[Tensor, Tensor]
    context: tuple[Tensor, ...]  # Eq. 17 running averages of the 4 hypernetwork outputs


class Hypernetwork(nn.Module):
    """N: Linear(features, width) -> ReLU -> Linear(width, out), averaged over the batch."""

    def __init__(self, features: int, width: int, out: int) -> None:
        super().__init__()
        self.first = nn.Linear(features, width)
        self.second = nn.Linear(width, out)

    def forward(self, x: Tensor, dropout: tuple[float, float, float], generator: torch.Generator | None) -> Tensor:
        x = _dropout(x, dropout[0], generator)
        x = _dropout(F.relu(self.first(x)), dropout[1], generator)
        return _dropout(self.second(x), dropout[2], generator).mean(dim=0)


def _dropout(x: Tensor, rate: float, generator: torch.Generator | None) -> Tensor:
    # F.dropout cannot take a generator; randomness must come from the run's generator.
    # The mask, (u >= rate) / (1 - rate), draws u from a Philox stream keyed by one draw of
    # that generator: the same mask on every device and path (a C kernel on a CPU).
    if generator is None or rate == 0.0:
        return x
    return philox_dropout(x, rate, generator)


class MTL2LMeta(nn.Module):
    """Meta-parameters (embedding, hypernetworks, layer-2 vectors, biases) and fixed factors.

    ``bias1``/``bias2`` cover the first ``biased_gates`` gates (input, forget, ...): 2 for
    the authors' layout, whose cell and output gates have no bias, 4 for a bias on every
    gate; :meth:`bias` gives the full (4 units,) vector."""

    def __init__(self, hidden: int, features: int, width: int, layer2_gates: int = 1, biased_gates: int = GATES) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.empty(hidden, 2))  # Linear(2, hidden), no bias
        self.hyper = nn.ModuleDict(
            {name: Hypernetwork(features, width, hidden if name.endswith("1") else layer2_gates) for name in FAMILIES}
        )
        self.bias1 = nn.Parameter(torch.empty(biased_gates * hidden))
        self.input2 = nn.Parameter(torch.empty(GATES, hidden))
        self.bias2 = nn.Parameter(torch.empty(biased_gates))
        for name in ("q", "p", "s", "j"):  # per gate, fixed: never trained, saved with the module
            self.register_buffer(name, torch.empty(GATES, hidden, hidden))

    @property
    def hidden(self) -> int:
        return self.embed.shape[0]

    @property
    def features(self) -> int:
        return self.hyper["input1"].first.in_features

    @staticmethod
    def bias(bias: Tensor, units: int) -> Tensor:
        """``bias1`` or ``bias2`` as the full (4 units,) vector, gates without one at zero."""
        missing = GATES * units - bias.numel()
        return bias if missing == 0 else F.pad(bias, (0, missing))


def haar_orthogonal(dim: int, count: int, seed: int) -> np.ndarray:
    """``count`` random orthogonal ``dim x dim`` matrices, uniform (Haar) on O(dim), as float64
    ``(count, dim, dim)``: the QR decomposition of a standard normal matrix with the signs
    of R's diagonal moved into Q (Mezzadri 2007, "How to generate random matrices from the
    classical compact groups").

    The same draws and arithmetic as ``scipy.stats.ortho_group.rvs(dim, size=count,
    random_state=seed)`` for ``count > 1``, so the factors are exactly those scipy gives
    (``tests/test_learned_optimizers.py`` holds them equal), without importing
    ``scipy.stats``: 63 MB of resident memory in every meta-training process.
    """
    z = np.random.RandomState(seed).normal(size=(count, dim, dim))
    q, r = np.linalg.qr(z)
    d = r.diagonal(offset=0, axis1=-2, axis2=-1)
    return q * (d / abs(d))[..., np.newaxis, :]


def svd_synapse(left: Tensor, diagonal: Tensor, right: Tensor) -> Tensor:
    """Per gate ``left[g] @ diag(diagonal) @ right[g].T``: (gates, n, n) -> (gates, n, n)."""
    return (left * diagonal) @ right.transpose(1, 2)


@dataclass(frozen=True)
class MTL2L(LearnedOptimizer):
    """MTL2L (hyperparameters; meta-parameters bound via ``meta``)."""

    # Batched seeds: the runner vmaps only the learner and calls ``update`` seed by seed
    # (each seed has its own synapses, and one seed's gate matrix is working set enough).
    update_per_seed: ClassVar[bool] = True
    # It flattens the coordinates itself; handed one flat vector, it skips that copy.
    coordinatewise: ClassVar[bool] = True

    hidden: int = 20
    context_features: int = 784
    hyper_width: int = 32
    smoothing: float = 0.9
    dropout: tuple[float, float, float] = (0.1, 0.25, 0.1)
    preprocess_p: float = 10.0
    output_scale: float = 0.1
    layer2_gates: int = 4
    smooth_after_relu: bool = True
    init_scheme: str = "authors"
    meta: MTL2LMeta | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("hidden", "context_features", "hyper_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (2 if name == "hidden" else 1):
                raise ValueError(f"invalid {name}: {value!r} (expected an integer >= {2 if name == 'hidden' else 1})")
        check_range("smoothing", self.smoothing, 0.0, 1.0, high_open=True)
        if not isinstance(self.dropout, (tuple, list)) or len(self.dropout) != 3:
            raise ValueError(f"invalid dropout: {self.dropout!r} (expected 3 rates: input, hidden, output)")
        for rate in self.dropout:
            check_range("dropout rate", rate, 0.0, 1.0, high_open=True)
        object.__setattr__(self, "dropout", tuple(float(r) for r in self.dropout))
        check_range("preprocess_p", self.preprocess_p, 0.0, low_open=True)
        check_range("output_scale", self.output_scale, 0.0, low_open=True)
        if self.layer2_gates not in (1, GATES) or isinstance(self.layer2_gates, bool):
            raise ValueError(f"invalid layer2_gates: {self.layer2_gates!r} (expected 4, one value per gate, or 1, shared)")
        if not isinstance(self.smooth_after_relu, bool):
            raise ValueError(f"invalid smooth_after_relu: {self.smooth_after_relu!r} (expected true or false)")
        if self.init_scheme not in INITS:
            raise ValueError(f"invalid init_scheme: {self.init_scheme!r} (expected one of {', '.join(INITS)})")

    def init_meta(self, *, generator: torch.Generator) -> MTL2LMeta:
        H = self.hidden
        authors = self.init_scheme == "authors"
        module = MTL2LMeta(H, self.context_features, self.hyper_width, self.layer2_gates, 2 if authors else GATES)
        uniform_(module.embed, 1 / math.sqrt(H if authors else 2), generator)
        for hyper in module.hyper.values():
            for layer in (hyper.first, hyper.second):
                bound = 1 / math.sqrt(layer.in_features)
                uniform_(layer.weight, bound, generator)
                uniform_(layer.bias, bound, generator)
        if authors:
            uniform_(module.input2, 1.0, generator)
        else:
            uniform_(module.bias1, 1 / math.sqrt(H), generator)
            uniform_(module.input2, 1 / math.sqrt(H), generator)
            uniform_(module.bias2, 1.0, generator)
        with torch.no_grad():
            if authors:  # only the input (-1) and forget (+1) gates have a bias
                module.bias1.copy_(torch.tensor([-1.0, 1.0]).repeat_interleave(H))
                module.bias2.copy_(torch.tensor([-1.0, 1.0]))
            else:
                module.bias1[0:H] -= 1.0  # input gate
                module.bias1[H : 2 * H] += 1.0  # forget gate
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            factors = torch.as_tensor(haar_orthogonal(H, 4 * GATES, seed), dtype=torch.float32).view(4, GATES, H, H)
            for name, value in zip(("q", "p", "s", "j"), factors):
                getattr(module, name).copy_(value)
        return module

    def init(self, params: Params, *, generator: torch.Generator | None = None) -> MTL2LState:
        module = self.module
        dtype, device = module.embed.dtype, next(iter(params.values())).device
        n = sum(v.numel() for v in params.values())
        zeros = lambda *shape: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        context = tuple(zeros(module.hyper[name].second.out_features) for name in FAMILIES)
        return MTL2LState(hidden=(zeros(module.hidden, n), zeros(1, n)), cell=(zeros(module.hidden, n), zeros(1, n)), context=context)

    def context_values(self, inputs: Tensor | None, previous: tuple[Tensor, ...], generator: torch.Generator | None) -> tuple[Tensor, ...]:
        """Eq. 17: the smoothed hypernetwork outputs for this step's input batch."""
        module = self.module
        if inputs is None:
            raise ValueError("mtl2l reads the learner's input batch: the step context has no inputs (pass inputs=...)")
        x = inputs.reshape(inputs.shape[0], -1).to(module.embed.dtype)
        if x.shape[1] != module.features:
            raise ValueError(
                f"mtl2l's hypernetworks read {module.features} input features per example "
                f"(context_features={module.features}), but this learner's inputs have {x.shape[1]}"
            )
        if module.training and generator is None:
            raise ValueError("mtl2l in training mode draws dropout masks: the step context needs a generator")
        m = self.smoothing
        fast = fast_mtl2l.smoothed_context(
            [module.hyper[name] for name in FAMILIES], x, previous, smoothing=m,
            relu_rows=2 * module.hidden if self.smooth_after_relu else 0, training=module.training,
        )
        if fast is not None:
            return fast
        rates = self.dropout if module.training else (0.0, 0.0, 0.0)
        raw = [module.hyper[name](x, rates, generator) for name in FAMILIES]
        if self.smooth_after_relu:  # layer 1's diagonals: the running average of ReLU outputs
            raw[0], raw[1] = F.relu(raw[0]), F.relu(raw[1])
        return tuple(torch.lerp(value, prev, m) for prev, value in zip(previous, raw))  # m prev + (1 - m) value

    def update(self, grads: Params, state: MTL2LState, params: Params, context: StepContext) -> tuple[Params, MTL2LState]:
        """One step. The two LSTM layers run by the fast path
        (:func:`l2lbench.fastpath.lstm.lstm_update`) wherever one of its forms applies; the
        layers at the end are the reference."""
        module = self.module
        H = module.hidden
        smoothed = self.context_values(context.inputs, state.context, context.generator)
        input1, recurrent1 = smoothed[0], smoothed[1]
        if not self.smooth_after_relu:
            input1, recurrent1 = F.relu(input1), F.relu(recurrent1)
        scale2, recurrent2 = smoothed[2], smoothed[3]  # 1 or 4 values (layer2_gates)
        bias1, bias2 = module.bias(module.bias1, H), module.bias(module.bias2, 1)

        # Layer 1: W_t folded with the Linear(2, H) embedding, stacked over the 4 gates.
        w = svd_synapse(module.q, input1, module.p) @ module.embed  # (gates, H, 2)
        u = svd_synapse(module.s, recurrent1, module.j)  # (gates, H, H)
        weight1 = torch.cat([w, u], dim=2).reshape(GATES * H, 2 + H)
        # Layer 2 (one unit): per gate a learned H-vector scaled by N3, recurrent weight N4.
        weight2 = torch.cat([module.input2 * scale2.view(-1, 1), recurrent2.view(-1, 1).expand(GATES, 1)], dim=1)  # (gates, H + 1)

        grad = flatten_coordinates(grads).to(module.embed.dtype)
        flat = flatten_coordinates(params)
        done = fast_lstm.lstm_update(
            grad, flat, state.hidden, state.cell, (weight1, weight2), (bias1, bias2),
            preprocess_p=self.preprocess_p, output_scale=self.output_scale,
        )
        if done is not None:
            new_flat, hidden, cell = done
            return unflatten_coordinates(new_flat, params), MTL2LState(hidden=hidden, cell=cell, context=smoothed)
        x = preprocess_gradients(grad, self.preprocess_p).movedim(-1, 0)  # (2, coordinates)
        h1, c1 = lstm_layer(x, state.hidden[0], state.cell[0], weight1, bias1)
        h2, c2 = lstm_layer(h1, state.hidden[1], state.cell[1], weight2, bias2)
        new_flat = flat + (self.output_scale * h2.squeeze(0)).to(flat.dtype)
        new_state = MTL2LState(hidden=(h1, h2), cell=(c1, c2), context=smoothed)
        return unflatten_coordinates(new_flat, params), new_state


# The registry's factory: the fields carry the defaults (``meta`` is bound after
# meta-training and is never a hyperparameter).
mtl2l = from_dataclass(MTL2L, "MTL2L (Kuo et al. 2020): a context-aware LSTM optimiser; learned, meta-train it first.")
