"""Learning-rate schedules in an optimiser's configuration: by hand, against torch.optim's
schedulers, through the conformance table, and in the results key."""

from __future__ import annotations

import math

import pytest
import torch

from l2lbench.errors import ConfigError
from l2lbench.plugin.base import StepContext
from l2lbench.plugin.registry import OptimizerRegistry
from l2lbench.plugin.schedule import Schedule, Scheduled
from l2lbench.spec.optimizer import OptimizerSpec
from l2lbench.optimizers.adam import adam
from l2lbench.optimizers.lstm import lstm
from l2lbench.optimizers.sgd import sgd
from l2lbench.testing import CHECKS, run_check


def test_factors_by_hand():
    cosine = Schedule("cosine")
    assert cosine.factor(0, 10) == 1.0 and cosine.factor(5, 10) == pytest.approx(0.5) and cosine.factor(10, 10) == 0.0
    warm = Schedule("cosine", warmup=4, final=0.1)
    assert [warm.factor(t, 14) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warm.factor(4, 14) == 1.0 and warm.factor(9, 14) == pytest.approx(0.1 + 0.9 * 0.5)
    assert Schedule("linear", final=0.2).factor(5, 10) == pytest.approx(0.6)
    assert [Schedule("step", every=3, gamma=0.5).factor(t, None) for t in (0, 2, 3, 6, 7)] == [1, 1, 0.5, 0.25, 0.25]
    assert Schedule().factor(123, None) == 1.0
    with pytest.raises(ValueError, match="needs the run's horizon"):
        cosine.factor(1, None)


@pytest.mark.parametrize("config,message", [
    ({"kind": "exp"}, "invalid schedule kind: 'exp' (expected one of constant, cosine, linear, step)"),
    ({"kind": "step"}, "invalid schedule every: 0 (expected a number of steps >= 1)"),
    ({"kind": "cosine", "warmup": -1}, "invalid schedule warmup: -1"),
    ({"kind": "cosine", "length": 3}, "unknown schedule key(s) 'length'"),
])
def test_bad_schedules_are_refused_in_one_line(config, message):
    with pytest.raises(ConfigError) as exc:
        OptimizerSpec.from_config({"entry": "adam", "schedule": config})
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("kind,torch_scheduler", [
    ("cosine", lambda opt, T: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T)),
    ({"kind": "step", "every": 3, "gamma": 0.5}, lambda opt, T: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)),
])
@pytest.mark.parametrize("rule,torch_rule", [
    (lambda: sgd(lr=0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (lambda: adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
], ids=["momentum", "adam"])
def test_scheduled_rule_equals_torch_with_its_scheduler(kind, torch_scheduler, rule, torch_rule):
    T = 8
    scheduled = Scheduled(rule(), Schedule.from_config(kind))
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(5, generator=generator)
    theta = {"w": torch.zeros(5)}
    state = scheduled.init(theta)
    p = torch.nn.Parameter(torch.zeros(5))
    opt = torch_rule([p])
    schedule = torch_scheduler(opt, T)
    for t in range(T):
        grad = 2 * (theta["w"] - target)
        theta, state = scheduled.update({"w": grad}, state, theta, StepContext(step=t, horizon=T))
        p.grad = 2 * (p.detach() - target)
        opt.step()
        schedule.step()
        torch.testing.assert_close(theta["w"], p.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("check", CHECKS)
def test_a_scheduled_optimizer_passes_the_conformance_table(check):
    run_check(check, lambda **kw: Scheduled(adam(**kw), Schedule("cosine", warmup=3)), lr=0.01)


def test_the_schedule_is_part_of_the_key_and_the_name():
    registry = OptimizerRegistry.default()
    plain = registry.resolve(OptimizerSpec.from_config({"entry": "adam", "lr": 0.003}))
    cosine = registry.resolve(OptimizerSpec.from_config({"entry": "adam", "lr": 0.003, "schedule": "cosine"}))
    warm = registry.resolve(OptimizerSpec.from_config('adam(lr=0.003, schedule={kind="cosine", warmup=50})'))
    assert len({plain.hash, cosine.hash, warm.hash}) == 3
    assert warm.display_name == "adam(lr=0.003)+cosine(warmup=50)" and warm.config()["schedule"]["warmup"] == 50
    # Fields a kind does not use do not split keys.
    same = registry.resolve(OptimizerSpec.from_config({"entry": "adam", "lr": 0.003, "schedule": {"kind": "cosine", "gamma": 0.3}}))
    assert same.hash == cosine.hash


def test_learned_optimisers_take_no_schedule():
    with pytest.raises(ConfigError, match="schedules apply to hand-designed optimisers"):
        Scheduled(lstm(), Schedule("cosine"))


def test_a_scheduled_optimizer_runs_in_a_suite_batched_as_seed_by_seed(tmp_path):
    from l2lbench.cli import main
    from l2lbench.store.runs import ResultsStore

    suite = tmp_path / "s.toml"
    suite.write_text(
        'seeds = 3\noptimizers = [{ entry = "adam", lr = 0.01, schedule = { kind = "cosine", warmup = 2 } }, "sgd"]\n'
        '[defaults]\nsteps = 8\nbatch_size = 16\neval_every = 4\n'
        '[[tasks]]\ndataset = { kind = "synthetic", n_train = 120, n_test = 32, size = 8 }\nlearner = { kind = "mlp", hidden = [8] }\n'
    )
    curves = {}
    for name, extra in (("batched", []), ("alone", ["--no-batch"])):
        results = tmp_path / name
        assert main(["run", "--suite", str(suite), "--results", str(results), "--workers", "1", *extra]) == 0
        curves[name] = {(r.optimizer_name, r.seed): r.train_loss for r in ResultsStore(results).runs()}
    assert ("adam-lr0.01-cosine(warmup=2)", 0) in curves["batched"]
    for key, loss in curves["batched"].items():
        assert loss == pytest.approx(curves["alone"][key], rel=1e-5)
