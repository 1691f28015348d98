"""The conformance suite every optimiser plug-in must pass (table-driven, like torch's
``common_optimizers`` and optax's optimiser x problem tables).

Use it on your own plug-in from pytest::

    import pytest
    from l2lbench.testing import CHECKS, run_check
    from my_package.my_opt import my_optimizer

    @pytest.mark.parametrize("check", CHECKS)
    def test_conformance(check):
        run_check(check, my_optimizer)          # factory, optional hyperparameters

Each check raises ``AssertionError`` with what went wrong, or ``Skipped`` when the
plug-in's capability flags make it not apply (e.g. the vmap check for a plug-in that
declares ``batchable = False``). A learned plug-in is checked bound to freshly initialised
meta-parameters, and passes three more checks: gradients reach every meta-parameter and
match finite differences, ``update`` leaves the meta-parameters alone, and a
``state_dict`` round-trip of the meta-parameters reproduces the updates exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.func import vmap

from l2lbench.plugin.adapter import FunctionalAdapter
from l2lbench.plugin.base import StepContext, capability, interface_problems
from l2lbench.plugin.learned import bind_fresh, flatten_coordinates, unflatten_coordinates
from l2lbench.plugin.tree import tensor_leaves, tree_stack

Factory = Callable[..., Any]


#: The notional run length the checks' step contexts give (a schedule reads it).
HORIZON = 20


class Skipped(Exception):
    """The check does not apply to this plug-in (by its declared capabilities)."""


@dataclass(frozen=True)
class Quadratic:
    """f(theta) = 1/2 sum_i a_i (theta_i - c_i)^2 over two named tensors; minimum 0."""

    scale: dict[str, torch.Tensor]
    centre: dict[str, torch.Tensor]

    @classmethod
    def make(cls, seed: int = 0, dtype: torch.dtype = torch.float32) -> "Quadratic":
        g = torch.Generator().manual_seed(seed)
        shapes = {"layer.weight": (4, 3), "layer.bias": (3,)}
        scale = {k: (0.5 + 1.5 * torch.rand(s, generator=g)).to(dtype) for k, s in shapes.items()}
        centre = {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}
        return cls(scale, centre)

    def init(self, seed: int = 1) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {k: (torch.randn(v.shape, generator=g) + 2.0).to(v.dtype) for k, v in self.centre.items()}

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(0.5 * (self.scale[k] * (params[k] - self.centre[k]) ** 2).sum() for k in params)

    def grads(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.scale[k] * (params[k] - self.centre[k]) for k in params}


def _context(
    step: int, params: dict[str, torch.Tensor], loss: torch.Tensor | None = None, horizon: int = HORIZON
) -> StepContext:
    # A fake input batch (8 examples of 784 features) for context-aware optimisers.
    inputs = torch.linspace(-1, 1, 8 * 784, dtype=next(iter(params.values())).dtype).view(8, 784)
    return StepContext(step=step, inputs=inputs, loss=loss, horizon=horizon)


def _run(
    optimizer: Any, problem: Quadratic, params: dict, steps: int, state: Any = None, start: int = 0, horizon: int = HORIZON
):
    state = optimizer.init(params, generator=torch.Generator().manual_seed(0)) if state is None else state
    for t in range(start, start + steps):
        context = _context(t, params, problem.loss(params), horizon)
        params, state = optimizer.update(problem.grads(params), state, params, context)
    return params, state


def _assert_close(actual: dict, expected: dict, what: str, atol: float, rtol: float = 0.0) -> None:
    assert set(actual) == set(expected), f"{what}: keys differ: {sorted(actual)} vs {sorted(expected)}"
    for k in expected:
        a, e = actual[k], expected[k]
        assert a.shape == e.shape, f"{what}: {k} has shape {tuple(a.shape)}, expected {tuple(e.shape)}"
        if not torch.allclose(a, e, atol=atol, rtol=rtol, equal_nan=True):
            diff = (a - e).abs().max().item()
            raise AssertionError(f"{what}: {k} differs by up to {diff:.3g} (tolerance {atol:g})")


def check_interface(optimizer: Any) -> None:
    """Has init/update; update returns (params, state) with the same names, shapes, dtypes."""
    problems = interface_problems(optimizer)
    assert not problems, "; ".join(problems)
    problem = Quadratic.make()
    params = problem.init()
    state = optimizer.init(params, generator=torch.Generator().manual_seed(0))
    result = optimizer.update(problem.grads(params), state, params, _context(0, params, problem.loss(params)))
    assert isinstance(result, tuple) and len(result) == 2, f"update must return (new_params, new_state), got {type(result).__name__}"
    new_params, _ = result
    assert isinstance(new_params, dict) and set(new_params) == set(params), (
        f"update must return params with keys {sorted(params)}, got {sorted(new_params) if isinstance(new_params, dict) else new_params!r}"
    )
    for k, p in params.items():
        q = new_params[k]
        assert isinstance(q, torch.Tensor), f"new param {k} is {type(q).__name__}, not a tensor"
        assert q.shape == p.shape and q.dtype == p.dtype and q.device == p.device, (
            f"new param {k} has shape/dtype/device {tuple(q.shape)} {q.dtype} {q.device}, expected {tuple(p.shape)} {p.dtype} {p.device}"
        )


def check_state_survives_update(optimizer: Any) -> None:
    """The state's named tensors keep their shapes and dtypes from one update to the next."""
    problem = Quadratic.make()
    _, first = _run(optimizer, problem, problem.init(), 1)
    _, second = _run(optimizer, problem, problem.init(), 2)
    a, b = tensor_leaves(first), tensor_leaves(second)
    assert set(a) == set(b), f"state entries change between updates: {sorted(a)} vs {sorted(b)}"
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, (
            f"state entry {k} changes from {tuple(a[k].shape)} {a[k].dtype} to {tuple(b[k].shape)} {b[k].dtype}"
        )


def check_out_of_place(optimizer: Any) -> None:
    """update modifies none of its inputs (params, grads, state) in place."""
    problem = Quadratic.make()
    params = problem.init()
    _, state = _run(optimizer, problem, params, 1)
    grads = problem.grads(params)
    before = [{k: v.detach().clone() for k, v in tensor_leaves(x).items()} for x in (params, grads, state)]
    optimizer.update(grads, state, params, _context(1, params, problem.loss(params)))
    for what, old, tree in zip(("params", "grads", "state"), before, (params, grads, state)):
        for k, v in tensor_leaves(tree).items():
            assert torch.equal(v, old[k]), f"update modified {what} entry {k} in place"


def check_deterministic(optimizer: Any) -> None:
    """The same inputs give the same outputs (randomness comes only from the context)."""
    problem = Quadratic.make()
    a, _ = _run(optimizer, problem, problem.init(), 5)
    b, _ = _run(optimizer, problem, problem.init(), 5)
    _assert_close(a, b, "two identical runs", atol=0.0)


def check_converges(optimizer: Any) -> None:
    """Default hyperparameters reduce a tiny quadratic by half within 500 steps."""
    if capability(optimizer, "learned"):
        raise Skipped("learned optimisers converge only after meta-training")
    problem = Quadratic.make()
    params = problem.init()
    start = problem.loss(params).item()
    final, _ = _run(optimizer, problem, params, 500, horizon=500)
    end = problem.loss(final).item()
    assert end < 0.5 * start, f"loss went from {start:.4g} to {end:.4g} in 500 steps (expected below half)"


def check_vmap_matches_loop(optimizer: Any) -> None:
    """Batched over 3 seeds with vmap, every seed matches its own unbatched run."""
    if not capability(optimizer, "batchable"):
        raise Skipped("declares batchable = False")
    problem = Quadratic.make()
    inits = [problem.init(seed) for seed in (1, 2, 3)]
    singles = [_run(optimizer, problem, p, 5)[0] for p in inits]
    params = tree_stack(inits)
    state = tree_stack([optimizer.init(p, generator=torch.Generator().manual_seed(0)) for p in inits])
    step = vmap(lambda p, s, t: optimizer.update(problem.grads(p), s, p, _context(t, p, problem.loss(p))),
                in_dims=(0, 0, None), randomness="error")
    for t in range(5):
        params, state = step(params, state, t)
    for i, single in enumerate(singles):
        _assert_close({k: v[i] for k, v in params.items()}, single, f"seed {i} under vmap", atol=1e-5)


def check_coordinatewise_flat(optimizer: Any) -> None:
    """A ``coordinatewise`` plug-in takes the same steps on one flat vector of all the
    coordinates as on the named tensors (the runner relies on it)."""
    if not capability(optimizer, "coordinatewise"):
        raise Skipped("does not declare coordinatewise = True")
    problem = Quadratic.make()
    expected, _ = _run(optimizer, problem, problem.init(), 5)
    shapes = {k: v.shape for k, v in problem.init().items()}
    flat = {"coordinates": flatten_coordinates(problem.init())}
    state = optimizer.init(flat, generator=torch.Generator().manual_seed(0))
    for t in range(5):
        params = unflatten_coordinates(flat["coordinates"], shapes)
        grads = {"coordinates": flatten_coordinates(problem.grads(params))}
        flat, state = optimizer.update(grads, state, flat, _context(t, params, problem.loss(params)))
        assert set(flat) == {"coordinates"}, f"update on a flat vector returned keys {sorted(flat)}"
    _assert_close(unflatten_coordinates(flat["coordinates"], shapes), expected, "flat vector vs named tensors", atol=1e-6)


def check_seeds_as_coordinates(optimizer: Any) -> None:
    """A ``coordinatewise`` and ``context_free`` plug-in, given two seeds' coordinates side
    by side and a context with nothing but the step, takes each seed's own steps (the
    runner batches seeds that way)."""
    if not (capability(optimizer, "coordinatewise") and capability(optimizer, "context_free")):
        raise Skipped("does not declare coordinatewise = True and context_free = True")
    problem = Quadratic.make()
    shapes = {k: v.shape for k, v in problem.init().items()}

    def run(inits: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """The seeds' coordinates side by side, (seeds x P,), updated together; (seeds, P) back."""
        stacked = flatten_coordinates(tree_stack(inits), lead=1)  # (seeds, P)
        params = {"coordinates": stacked.reshape(-1)}
        state = optimizer.init(params)
        for t in range(5):
            # The quadratic's gradient broadcasts over the leading seed dimension.
            named = unflatten_coordinates(params["coordinates"].view(stacked.shape), shapes)
            grads = {"coordinates": flatten_coordinates(problem.grads(named), lead=1).reshape(-1)}
            params, state = optimizer.update(grads, state, params, StepContext(step=t, horizon=HORIZON))
        return params["coordinates"].view(stacked.shape)

    seeds = [problem.init(1), problem.init(2)]
    together = run(seeds)
    for i, seed in enumerate(seeds):
        alone = run([seed])[0]
        if not torch.allclose(together[i], alone, atol=1e-6, rtol=0):
            diff = (together[i] - alone).abs().max().item()
            raise AssertionError(f"seed {i} beside another seed differs from seed {i} alone by up to {diff:.3g}")


def _in_float64(optimizer: Any) -> Any:
    # Finite differences need float64 throughout, meta-parameters included.
    if capability(optimizer, "learned"):
        return optimizer.with_meta(copy.deepcopy(optimizer.meta).double())
    return optimizer


def _unrolled_loss(optimizer: Any, problem: Quadratic, theta: dict, steps: int = 3) -> torch.Tensor:
    """The loss after ``steps`` updates, differentiable in theta (and meta-parameters)."""
    state = optimizer.init(theta, generator=torch.Generator().manual_seed(0))
    for t in range(steps):
        loss = problem.loss(theta)
        grads = dict(zip(theta, torch.autograd.grad(loss, list(theta.values()), create_graph=True)))
        theta, state = optimizer.update(grads, state, theta, _context(t, theta, loss))
    return problem.loss(theta)


def check_differentiable(optimizer: Any) -> None:
    """Gradients flow through 3 updates to the initial params and match finite differences."""
    if not capability(optimizer, "differentiable"):
        raise Skipped("declares differentiable = False")
    optimizer = _in_float64(optimizer)
    problem = Quadratic.make(dtype=torch.float64)
    theta0 = {k: v.double() for k, v in problem.init().items()}
    direction = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) for k, v in theta0.items()}

    def unrolled(theta: dict) -> torch.Tensor:
        return _unrolled_loss(optimizer, problem, theta)

    leaves = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
    final = unrolled(leaves)
    grads = torch.autograd.grad(final, list(leaves.values()), allow_unused=True)
    assert all(g is not None for g in grads), "no gradient reaches the initial parameters (in-place or detached ops?)"
    analytic = sum((g * direction[k]).sum() for g, k in zip(grads, leaves)).item()
    eps = 1e-6
    plus = unrolled({k: (v + eps * direction[k]).requires_grad_(True) for k, v in theta0.items()}).item()
    minus = unrolled({k: (v - eps * direction[k]).requires_grad_(True) for k, v in theta0.items()}).item()
    numeric = (plus - minus) / (2 * eps)
    assert abs(analytic - numeric) <= 1e-4 * max(1.0, abs(numeric)), (
        f"gradient through the unroll {analytic:.8g} differs from finite differences {numeric:.8g}"
    )


def check_adapter_matches_functional(optimizer_factory_result: Any) -> None:
    """The torch.optim form (FunctionalAdapter) takes the same steps as the functional form."""
    optimizer = optimizer_factory_result
    problem = Quadratic.make()
    expected, _ = _run(optimizer, problem, problem.init(), 5)
    tensors = [torch.nn.Parameter(v.clone()) for v in problem.init().values()]
    names = list(problem.init())
    adapter = FunctionalAdapter(tensors, optimizer, horizon=HORIZON)
    for t in range(5):
        params = dict(zip(names, tensors))
        adapter.zero_grad()
        problem.loss(params).backward()
        adapter.step(inputs=_context(t, params).inputs)
    _assert_close({k: p.detach() for k, p in zip(names, tensors)}, expected, "adapter vs functional", atol=1e-6)


def check_state_dict_roundtrip(optimizer: Any) -> None:
    """Saving the adapter's state_dict after 3 steps and resuming gives the 6-step result exactly."""
    problem = Quadratic.make()
    names = list(problem.init())

    def make() -> tuple[list[torch.nn.Parameter], FunctionalAdapter]:
        tensors = [torch.nn.Parameter(v.clone()) for v in problem.init().values()]
        return tensors, FunctionalAdapter(tensors, optimizer, horizon=HORIZON)

    def steps(tensors: list, adapter: FunctionalAdapter, start: int, count: int) -> None:
        for t in range(start, start + count):
            params = dict(zip(names, tensors))
            adapter.zero_grad()
            problem.loss(params).backward()
            adapter.step(inputs=_context(t, params).inputs)

    straight_params, straight = make()
    steps(straight_params, straight, 0, 6)
    first_params, first = make()
    steps(first_params, first, 0, 3)
    saved = copy.deepcopy(first.state_dict())
    resumed_params, resumed = make()
    with torch.no_grad():
        for p, q in zip(resumed_params, first_params):
            p.copy_(q)
    resumed.load_state_dict(saved)
    steps(resumed_params, resumed, 3, 3)
    _assert_close(
        {k: p.detach() for k, p in zip(names, resumed_params)},
        {k: p.detach() for k, p in zip(names, straight_params)},
        "resumed from state_dict vs uninterrupted",
        atol=0.0,
    )
    assert saved["functional_states"][0].keys() == first.state_dict()["functional_states"][0].keys()


def _learned_only(optimizer: Any) -> None:
    if not capability(optimizer, "learned"):
        raise Skipped("not a learned optimiser")


def check_meta_gradient(optimizer: Any) -> None:
    """Every meta-parameter gets a finite gradient through a 3-step unroll, matching
    finite differences along a random direction (float64)."""
    _learned_only(optimizer)
    optimizer = _in_float64(optimizer)
    problem = Quadratic.make(dtype=torch.float64)
    theta0 = {k: v.double().requires_grad_(True) for k, v in problem.init().items()}
    meta = dict(optimizer.meta.named_parameters())
    assert meta, "a learned optimiser must have meta-parameters (nn.Parameter in its module)"
    grads = torch.autograd.grad(_unrolled_loss(optimizer, problem, dict(theta0)), list(meta.values()), allow_unused=True)
    missing = [name for name, g in zip(meta, grads) if g is None]
    assert not missing, f"no gradient reaches meta-parameter(s) {', '.join(missing)}"
    bad = [name for name, g in zip(meta, grads) if not torch.isfinite(g).all()]
    assert not bad, f"non-finite meta-gradient for {', '.join(bad)}"
    generator = torch.Generator().manual_seed(5)
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in meta.values()]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()

    def shifted(sign: float) -> float:
        eps = 1e-6
        moved = copy.deepcopy(optimizer.meta)
        with torch.no_grad():
            for p, d in zip(moved.parameters(), direction):
                p.add_(sign * eps * d)
        return _unrolled_loss(optimizer.with_meta(moved), problem, dict(theta0)).item()

    numeric = (shifted(1.0) - shifted(-1.0)) / 2e-6
    assert abs(analytic - numeric) <= 1e-4 * max(1.0, abs(numeric)), (
        f"meta-gradient {analytic:.8g} differs from finite differences {numeric:.8g}"
    )


def check_meta_untouched(optimizer: Any) -> None:
    """update() changes no meta-parameter or buffer: per-run state lives in the state."""
    _learned_only(optimizer)
    before = {k: v.clone() for k, v in optimizer.meta.state_dict().items()}
    problem = Quadratic.make()
    _run(optimizer, problem, problem.init(), 3)
    for k, v in optimizer.meta.state_dict().items():
        assert torch.equal(v, before[k]), f"update modified meta-parameter {k}"


def check_meta_state_dict_roundtrip(optimizer: Any) -> None:
    """Meta-parameters saved with state_dict and loaded into a differently initialised
    module give exactly the same updates (fixed buffers included)."""
    _learned_only(optimizer)
    other = optimizer.init_meta(generator=torch.Generator().manual_seed(12345)).eval()
    other.load_state_dict(copy.deepcopy(optimizer.meta.state_dict()))
    problem = Quadratic.make()
    expected, _ = _run(optimizer, problem, problem.init(), 3)
    actual, _ = _run(optimizer.with_meta(other), problem, problem.init(), 3)
    _assert_close(actual, expected, "after a meta state_dict round-trip", atol=0.0)


CHECKS: dict[str, Callable[[Any], None]] = {
    "interface": check_interface,
    "state_survives_update": check_state_survives_update,
    "out_of_place": check_out_of_place,
    "deterministic": check_deterministic,
    "converges_on_quadratic": check_converges,
    "vmap_matches_loop": check_vmap_matches_loop,
    "coordinatewise_flat": check_coordinatewise_flat,
    "seeds_as_coordinates": check_seeds_as_coordinates,
    "differentiable": check_differentiable,
    "adapter_matches_functional": check_adapter_matches_functional,
    "state_dict_roundtrip": check_state_dict_roundtrip,
    "meta_gradient": check_meta_gradient,
    "meta_untouched": check_meta_untouched,
    "meta_state_dict_roundtrip": check_meta_state_dict_roundtrip,
}


#: The checks ``l2lbench run`` applies to every plug-in before running it (``--no-check``
#: skips them): cheap, and each catches a plug-in that would store plausible wrong numbers.
FAST_CHECKS = ("interface", "state_survives_update", "out_of_place")


def fast_problems(optimizer: Any) -> list[str]:
    """``"check: what went wrong"`` for each of :data:`FAST_CHECKS` the (built) plug-in fails.

    Only failed assertions count: what would pass silently and store wrong numbers (inputs
    changed in place, wrong shapes). A plug-in that raises fails its runs loudly anyway,
    each with its reason, and costs only those runs; its exception is not a problem here."""
    problems = []
    for name in FAST_CHECKS:
        try:
            CHECKS[name](bind_fresh(optimizer))
        except AssertionError as exc:
            problems.append(f"{name}: {exc}")
        except BaseException:  # noqa: BLE001 - Skipped, or the plug-in's own error or exit: its runs will say
            continue
    return problems


def run_check(check: str, factory: Factory, **hparams: Any) -> None:
    """Build the plug-in from ``factory(**hparams)`` and run one named check on it
    (a learned plug-in bound to fresh meta-parameters).

    Raises:
        AssertionError: the plug-in fails the check (the message says how).
        Skipped: the check does not apply; under pytest this becomes a skip.
    """
    optimizer = bind_fresh(factory(**hparams))
    try:
        CHECKS[check](optimizer)
    except Skipped as exc:
        try:
            import pytest
        except ImportError:  # pragma: no cover - outside pytest
            raise exc
        pytest.skip(f"{check}: {exc}")


def run_conformance(factory: Factory, **hparams: Any) -> dict[str, str]:
    """Every check on one plug-in: ``{check: "passed" | "skipped: ..." | "FAILED: ..."}``."""
    results = {}
    for name, check in CHECKS.items():
        try:
            check(bind_fresh(factory(**hparams)))
            results[name] = "passed"
        except Skipped as exc:
            results[name] = f"skipped: {exc}"
        except Exception as exc:  # report every failure, not only the first
            results[name] = f"FAILED: {type(exc).__name__}: {exc}"
    return results
