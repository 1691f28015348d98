"""Meta-gradient estimators (TBPTT, ES, PES) against the exact meta-gradient of a tiny problem.

The learned plug-in here has two meta-parameters, a log learning rate and a momentum; the
learner is softmax regression on 4x4 synthetic images, trained T = 20 steps on a trial's
fixed batches. The exact gradient of the whole run's mean loss comes from autograd through
a plain loop written below (second order: the learner's gradients are differentiated too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2lbench.cli import main
from l2lbench.errors import ConfigError
from l2lbench.execute.estimators import prepare_task, truncations
from l2lbench.execute.learner import FunctionalLearner
from l2lbench.execute.metatest import batch_schedule, minibatch
from l2lbench.execute.metatrain import meta_train
from l2lbench.execute.parallel import run_threads
from l2lbench.plugin.learned import LearnedOptimizer
from l2lbench.spec.hashing import content_hash, derive_seed
from l2lbench.spec.metatraining import MetaTrainingSpec

CPU = torch.device("cpu")
T, K = 20, 5
LR, MOMENTUM = 0.1, 0.3
DATASET = {"kind": "synthetic", "n_train": 96, "n_test": 8, "size": 4, "num_classes": 3}


class HeavyBallMeta(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_lr = nn.Parameter(torch.tensor(math.log(LR)))
        self.momentum = nn.Parameter(torch.tensor(MOMENTUM))


@dataclass(frozen=True)
class HeavyBall(LearnedOptimizer):
    """``v <- momentum v + g; theta <- theta - exp(log_lr) v`` with learned log_lr, momentum."""

    coordinatewise = True
    context_free = True
    meta: nn.Module | None = field(default=None, compare=False, repr=False)

    def init_meta(self, *, generator: torch.Generator) -> nn.Module:
        return HeavyBallMeta()

    def init(self, params, *, generator=None):
        return {k: torch.zeros_like(v) for k, v in params.items()}

    def update(self, grads, state, params, context):
        lr, momentum = self.module.log_lr.exp(), self.module.momentum
        velocity = {k: momentum * state[k] + grads[k] for k in params}
        return {k: params[k] - lr * velocity[k] for k in params}, velocity


def _spec(**overrides) -> MetaTrainingSpec:
    config = {"tasks": [{"dataset": DATASET, "learner": {"kind": "mlp", "hidden": []}}], "steps": T,
              "batch_size": 8, "trials": 1, "unroll": K}
    return MetaTrainingSpec.from_config({**config, **overrides})


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    spec = _spec()
    module = HeavyBall().init_meta(generator=torch.Generator())
    data = prepare_task(spec.tasks[0], tmp_path_factory.mktemp("data"), CPU)
    with run_threads():  # one thread, as every run: tiny operations on two threads mostly wait
        yield HeavyBall().with_meta(module), module, data


def _whole_run(problem, spec: MetaTrainingSpec, seed: int = 0) -> torch.Tensor:
    """The estimate of d(mean loss over the run)/d(log_lr, momentum) from one trial's
    truncations at fixed meta-parameters: TBPTT's estimates are of the summed losses, the
    others' of each truncation's mean loss."""
    bound, module, data = problem
    total = torch.zeros(2)
    generator = torch.Generator().manual_seed(seed)
    for estimate in truncations(bound, module, spec, spec.tasks[0], data, 0, CPU, generator=generator):
        weight = 1 / T if spec.estimator == "tbptt" else len(estimate.terms) / T
        total += weight * torch.stack([estimate.gradient["log_lr"], estimate.gradient["momentum"]])
    return total


def _exact(problem, spec: MetaTrainingSpec, *, second_order: bool = True) -> torch.Tensor:
    """Autograd through the plain loop on the trial's initial learner and batches (the
    spec's seeds); ``second_order=False`` holds the learner's gradients as data."""
    _, _, data = problem
    task = spec.tasks[0]
    learner = FunctionalLearner(task.learner.build(task.dataset.input_shape, task.dataset.num_classes))
    init = learner.init(torch.Generator().manual_seed(derive_seed(spec.seed_hash, 0, "init")))
    order = batch_schedule(len(data.train_labels), T + 1, task.batch_size, derive_seed(spec.seed_hash, 0, "data"))
    batches = [minibatch(data.train_images, data.train_labels, order[t], data.mean, data.std) for t in range(T + 1)]
    log_lr = torch.tensor(math.log(LR), requires_grad=True)
    momentum = torch.tensor(MOMENTUM, requires_grad=True)
    w, b = init["1.weight"].requires_grad_(), init["1.bias"].requires_grad_()

    def loss_and_gradient(w, b, t):
        x, y = batches[t]
        loss = F.cross_entropy(x.flatten(1) @ w.T + b, y)
        return loss, torch.autograd.grad(loss, (w, b), create_graph=second_order, retain_graph=True)

    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    _, (gw, gb) = loss_and_gradient(w, b, 0)
    losses = []
    for t in range(T):
        vw, vb = momentum * vw + gw, momentum * vb + gb
        w, b = w - log_lr.exp() * vw, b - log_lr.exp() * vb
        loss, (gw, gb) = loss_and_gradient(w, b, t + 1)
        losses.append(loss)
    return torch.stack(torch.autograd.grad(torch.stack(losses).mean(), (log_lr, momentum)))


def _samples(problem, spec: MetaTrainingSpec, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error of ``count`` independent whole-run estimates."""
    values = torch.stack([_whole_run(problem, spec, seed) for seed in range(count)])
    return values.mean(dim=0), values.std(dim=0) / math.sqrt(count)


def _distance(a: torch.Tensor, b: torch.Tensor, error: torch.Tensor) -> float:
    """How far apart ``a`` and ``b`` are, in standard errors (both components together:
    for an unbiased mean, the root of a chi-squared variable with 2 degrees of freedom,
    above 3 with probability 1.1%)."""
    return ((a - b) / error).norm().item()


def test_tbptt_without_truncation_is_the_first_order_gradient(problem):
    spec = _spec(unroll=T)
    torch.testing.assert_close(_whole_run(problem, spec), _exact(problem, spec, second_order=False), rtol=1e-4, atol=1e-6)


def test_pes_is_unbiased_where_truncated_estimators_are_not(problem):
    exact = _exact(problem, _spec())
    # 200 pairs. Were the accumulator not carried across truncations (xi = eps, as ES),
    # the mean would be 25 standard errors away.
    pes, pes_error = _samples(problem, _spec(estimator="pes", particles=4, sigma=0.01), 50)
    assert _distance(pes, exact, pes_error) < 3, (pes, pes_error, exact)  # 0.9 here
    # Truncation 5 misses how the meta-parameters shaped the learner before each
    # truncation: TBPTT about 4 times too small, 8.4 of PES's standard errors away.
    tbptt = _whole_run(problem, _spec())
    assert _distance(tbptt, exact, pes_error) > 6, (tbptt, pes_error, exact)
    es, es_error = _samples(problem, _spec(estimator="es", particles=2, sigma=0.01), 25)  # 50 pairs
    assert _distance(es, exact, es_error) > 6, (es, es_error, exact)  # 27 here


def test_estimates_leave_the_meta_parameters_as_they_were(problem):
    bound, module, data = problem
    before = {k: v.clone() for k, v in module.state_dict().items()}
    spec = _spec(estimator="pes", particles=2)
    estimates = list(truncations(bound, module, spec, spec.tasks[0], data, 0, CPU))
    assert [e.step for e in estimates] == [5, 10, 15, 20]
    assert [e.learner_steps for e in estimates] == [2 * 2 * K] * 4
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("estimator,runs", [("es", 2 * 3 + 1), ("pes", 2 * 3)])
def test_meta_training_with_evolution_strategies(estimator, runs, tmp_path):
    spec = _spec(estimator=estimator, particles=3, trials=2, unroll=8)
    with run_threads():
        result = meta_train(HeavyBall(), spec, data_dir=tmp_path, device=CPU, progress=False)
    assert len(result.unroll_loss) == 2 * 3  # truncations of 8, 8 and 4 steps per trial
    assert result.learner_steps == 2 * T * runs  # every particle's steps counted
    assert len(result.trial_loss) == 2 and all(math.isfinite(v) for v in result.trial_loss)
    assert result.module.log_lr.item() != pytest.approx(math.log(LR), abs=1e-6)  # Adam moved it


def test_estimators_share_the_trials_and_the_tbptt_config_is_unchanged():
    tbptt, pes = _spec(), _spec(estimator="pes", sigma=0.05, particles=4)
    config = tbptt.config()
    assert not {"estimator", "sigma", "particles"} & set(config)  # the config of before: old hashes hold
    assert tbptt.hash == content_hash(config) == tbptt.seed_hash
    assert pes.hash != tbptt.hash and pes.seed_hash == tbptt.hash  # same learners, batches, meta-init
    assert pes.config()["estimator"] == "pes" and pes.config()["sigma"] == 0.05
    assert pes.name.endswith("-unroll5-pes4-sigma0.05")
    assert MetaTrainingSpec.from_config(pes.config()).hash == pes.hash  # a stored config round-trips


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"estimator": "bptt"}, "invalid meta-training estimator: 'bptt' \\(expected one of tbptt, es, pes\\)"),
        ({"estimator": "pes", "sigma": 0}, "invalid meta-training sigma: 0 \\(expected a positive number\\)"),
        ({"estimator": "es", "sigma": "big"}, "invalid meta-training sigma: 'big'"),
        ({"estimator": "pes", "sigma": float("nan")}, "invalid meta-training sigma: nan"),
        ({"estimator": "pes", "particles": 0}, "invalid meta-training particles: 0 \\(expected a positive integer\\)"),
        ({"estimator": "es", "particles": 2.5}, "invalid meta-training particles: 2.5"),
        ({"sigma": 0.1}, "invalid meta-training sigma: 0.1 with estimator 'tbptt'"),
        ({"particles": 4}, "invalid meta-training particles: 4 with estimator 'tbptt'"),
    ],
)
def test_estimator_fields_are_validated(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _spec(**overrides)


def test_cli_meta_train_takes_the_estimator(tmp_path, capsys):
    results = tmp_path / "results"
    args = ["meta-train", "lstm", "--tasks", "synthetic", "--steps", "4", "--trials", "1", "--batch-size", "16",
            "--unroll", "2", "--results", str(results)]
    assert main([*args, "--estimator", "pes", "--sigma", "0.02", "--particles", "2", "--out", str(tmp_path / "a.pt")]) == 0
    from l2lbench.store.checkpoint import load_checkpoint

    meta = load_checkpoint(tmp_path / "a.pt").meta_training
    assert (meta["estimator"], meta["sigma"], meta["particles"]) == ("pes", 0.02, 2)
    capsys.readouterr()
    assert main([*args, "--estimator", "backprop"]) == 2
    assert "invalid meta-training estimator: 'backprop'" in capsys.readouterr().err
    assert main([*args, "--particles", "0"]) == 2
    assert "argument --particles: invalid value '0'" in capsys.readouterr().err


def test_a_suite_table_chooses_the_estimator(tiny_suite, tiny_meta):
    from l2lbench.spec.optimizer import OptimizerSpec
    from l2lbench.spec.suite import load_suite

    suite = load_suite(tiny_suite(tiny_meta + 'estimator = "es"\nsigma = 0.05\nparticles = 3\n'))
    spec = suite.meta_training_for(OptimizerSpec("lstm"), suite.tasks[0])
    assert (spec.estimator, spec.sigma, spec.particles, spec.unroll) == ("es", 0.05, 3, 3)
    with pytest.raises(ConfigError, match="invalid meta-training estimator: 'PES'"):
        load_suite(tiny_suite(tiny_meta + 'estimator = "PES"\n'))
