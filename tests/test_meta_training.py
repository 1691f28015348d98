"""Meta-training (Algorithm 1) on tiny synthetic tasks: what it updates, when, and how."""

from __future__ import annotations

import math

import pytest
import torch

from l2lbench.errors import ConfigError
from l2lbench.execute import metatrain as train_module
from l2lbench.execute.estimators import add_noise
from l2lbench.spec.metatraining import MetaTrainingSpec
from l2lbench.execute.metatrain import meta_train
from l2lbench.optimizers.lstm import lstm
from l2lbench.optimizers.mtl2l import mtl2l

CPU = torch.device("cpu")
SYNTHETIC = {"kind": "synthetic", "n_train": 256, "n_test": 64}


def _spec(**overrides) -> MetaTrainingSpec:
    config = {"tasks": [{"dataset": SYNTHETIC, "learner": {"kind": "mlp", "hidden": [8]}}], "steps": 12,
              "batch_size": 16, "trials": 2, "unroll": 5}
    config.update(overrides)
    return MetaTrainingSpec.from_config(config)


def test_spec_defaults_are_the_papers():
    spec = MetaTrainingSpec.from_config({"tasks": ["mnist"]})
    assert (spec.trials, spec.unroll, spec.lr, spec.clip, spec.horizon) == (20, 5, 0.001, 1.0, 100)
    assert spec.tasks[0].batch_size == 128
    assert spec.name == "mnist-20x100steps-unroll5"
    multi = MetaTrainingSpec.from_config({"tasks": ["fashion-mnist", "kmnist"], "trials": 30})
    assert multi.name == "fashion-mnist+kmnist-30x100steps-unroll5"
    assert multi.hash != spec.hash
    assert MetaTrainingSpec.from_config({"tasks": ["mnist"], "seed": 1}).hash != spec.hash


@pytest.mark.parametrize(
    "config,match",
    [
        ({}, "invalid meta_training tasks: None"),
        ({"tasks": []}, "invalid meta_training tasks: \\[\\]"),
        ({"tasks": ["mnist"], "trials": 0}, "invalid meta-training trials: 0"),
        ({"tasks": ["mnist"], "unroll": -5}, "invalid meta-training unroll: -5"),
        ({"tasks": ["mnist"], "lr": "fast"}, "invalid meta-training lr: 'fast'"),
        ({"tasks": ["mnist"], "steps": 0}, "invalid steps: 0"),
        ({"tasks": ["nope"]}, "unknown dataset 'nope'"),
        ({"tasks": ["mnist"], "horizon": 5}, "unknown meta_training key\\(s\\) 'horizon'"),
        ({"tasks": ["mnist"], "param_noise": "yes"}, "invalid meta-training param_noise: 'yes'"),
    ],
)
def test_spec_errors_name_the_bad_value(config, match):
    with pytest.raises(ConfigError, match=match):
        MetaTrainingSpec.from_config(config)


def test_meta_updates_per_unroll_and_learner_steps(tmp_path):
    # 12 steps with unroll 5: meta-updates after steps 5, 10 and 12 -> 3 per trial.
    result = meta_train(lstm(), _spec(), data_dir=tmp_path, device=CPU, progress=False)
    assert len(result.unroll_loss) == 2 * 3
    assert result.learner_steps == 2 * 12
    assert len(result.trial_loss) == 2
    assert all(math.isfinite(v) for v in result.unroll_loss)
    assert not result.module.training  # handed back ready for meta-testing


def test_meta_gradients_are_clamped(tmp_path, monkeypatch):
    seen = []
    real_step = train_module.MetaAdam.step

    def spy(self, *args, **kwargs):
        seen.append(max(p.grad.abs().max().item() for p in self.params.values() if p.grad is not None))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(train_module.MetaAdam, "step", spy)
    meta_train(lstm(), _spec(clip=1e-4), data_dir=tmp_path, device=CPU, progress=False)
    assert seen and max(seen) <= 1e-4
    assert max(seen) == pytest.approx(1e-4)  # the clamp was active, not vacuous


def test_meta_adam_takes_torch_optim_adams_steps():
    def module():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1, bias=False))

    ours, theirs = module(), module()
    frozen = [ours[0].bias, theirs[0].bias]  # no gradient: both must leave it (and its state) alone
    meta_adam, torch_adam = train_module.MetaAdam(ours, lr=0.01), torch.optim.Adam(theirs.parameters(), lr=0.01)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    for step in range(6):
        for model, opt in ((ours, meta_adam), (theirs, torch_adam)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            if step < 3:
                model[0].bias.grad = None
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(frozen[0], module()[0].bias)  # moved once it had gradients


def test_meta_training_imports_no_torch_optim_machinery(tmp_path):
    # torch.optim optimisers import torch._dynamo and sympy (153 MB RSS): meta-training must not.
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from l2lbench.spec.metatraining import MetaTrainingSpec\n"
        "from l2lbench.execute.metatrain import meta_train\n"
        "from l2lbench.optimizers.mtl2l import mtl2l\n"
        "from l2lbench.spec.task import TaskSpec\n"
        "task = TaskSpec.from_config({'dataset': {'kind': 'synthetic', 'n_train': 64, 'n_test': 16}, 'steps': 4, 'batch_size': 8})\n"
        f"meta_train(mtl2l(), MetaTrainingSpec(tasks=(task,), trials=1, unroll=2), data_dir=Path({str(tmp_path)!r}), device=torch.device('cpu'), progress=False)\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy', 'torchvision', 'scipy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_meta_parameters_change_and_mtl2l_factors_stay_fixed(tmp_path):
    opt = mtl2l(context_features=784)
    before = opt.init_meta(generator=torch.Generator().manual_seed(0))
    spec = _spec()
    result = meta_train(opt, spec, data_dir=tmp_path, device=CPU, progress=False)
    fresh = opt.init_meta(generator=torch.Generator().manual_seed(train_module.derive_seed(spec.hash, "meta-init")))
    after = result.module.state_dict()
    for name in ("q", "p", "s", "j"):
        assert torch.equal(after[name], fresh.state_dict()[name]), f"factor {name} moved during meta-training"
    moved = [k for k, v in fresh.named_parameters() if not torch.equal(v, after[k])]
    assert "embed" in moved and "bias1" in moved
    assert before is not None


def test_meta_training_is_reproducible(tmp_path):
    a = meta_train(lstm(), _spec(), data_dir=tmp_path, device=CPU, progress=False)
    b = meta_train(lstm(), _spec(), data_dir=tmp_path, device=CPU, progress=False)
    assert a.unroll_loss == b.unroll_loss
    c = meta_train(lstm(), _spec(seed=1), data_dir=tmp_path, device=CPU, progress=False)
    assert c.unroll_loss != a.unroll_loss


def test_tasks_alternate_trial_by_trial(tmp_path, monkeypatch):
    used = []
    real = train_module._trial

    def spy(bound, module, meta_optimizer, spec, task, *rest):
        used.append(task.dataset.seed)
        return real(bound, module, meta_optimizer, spec, task, *rest)

    monkeypatch.setattr(train_module, "_trial", spy)
    spec = _spec(tasks=[{"dataset": {**SYNTHETIC, "seed": 1}}, {"dataset": {**SYNTHETIC, "seed": 2}}], trials=4)
    meta_train(mtl2l(), spec, data_dir=tmp_path, device=CPU, progress=False)
    assert used == [1, 2, 1, 2]  # odd trials the first task, even trials the second


def test_parameter_noise_decays_and_changes_the_trajectory(tmp_path):
    plain = meta_train(lstm(), _spec(), data_dir=tmp_path, device=CPU, progress=False)
    noisy = meta_train(lstm(), _spec(param_noise=True), data_dir=tmp_path, device=CPU, progress=False)
    assert noisy.unroll_loss != plain.unroll_loss
    params = {"w": torch.full((1000,), 2.0)}
    spec = _spec(param_noise=True, noise_scales=[0.05])
    early = add_noise(params, 0, 100, spec, torch.Generator().manual_seed(0))["w"] - 2.0
    late = add_noise(params, 90, 100, spec, torch.Generator().manual_seed(0))["w"] - 2.0
    assert early.std().item() == pytest.approx(2.0 * 0.05, rel=0.1)  # max|theta| * 1 * 0.05
    assert late.std().item() == pytest.approx(2.0 * 0.05 * 0.1, rel=0.1)


def test_hidden_state_carries_over_unrolls_detached(tmp_path, monkeypatch):
    """The state entering each unroll is detached but not reset (truncated BPTT)."""
    seen = []
    opt = lstm()
    real_update = type(opt).update

    def spy(self, grads, state, params, context):
        seen.append((context.step, state.hidden[0].requires_grad, bool(state.hidden[0].abs().sum() > 0)))
        return real_update(self, grads, state, params, context)

    monkeypatch.setattr(type(opt), "update", spy)
    meta_train(opt, _spec(trials=1), data_dir=tmp_path, device=CPU, progress=False)
    by_step = {step: (grad, nonzero) for step, grad, nonzero in seen}
    assert by_step[0] == (False, False)  # a fresh learner starts from zero state
    assert by_step[5] == (False, True)  # new unroll: detached, but carried over
    assert by_step[6][0] is True  # inside an unroll the graph is kept


@pytest.mark.parametrize("estimator,runs", [("es", 3), ("pes", 2)])
def test_evolution_strategies_meta_train_both_reference_optimizers_without_autograd(estimator, runs, tmp_path, monkeypatch):
    for opt in (lstm(), mtl2l(context_features=784)):
        grad_modes = []
        real_update = type(opt).update

        def spy(self, grads, state, params, context, real_update=real_update):
            grad_modes.append(torch.is_grad_enabled())
            return real_update(self, grads, state, params, context)

        monkeypatch.setattr(type(opt), "update", spy)
        spec = _spec(trials=1, estimator=estimator, particles=1)
        fresh = opt.init_meta(generator=torch.Generator().manual_seed(train_module.derive_seed(spec.seed_hash, "meta-init")))
        result = meta_train(opt, spec, data_dir=tmp_path, device=CPU, progress=False)
        assert grad_modes and not any(grad_modes)  # the plug-in's no-grad (meta-test) update throughout
        assert result.learner_steps == 12 * runs and len(result.unroll_loss) == 3
        assert any(not torch.equal(v, result.module.state_dict()[k]) for k, v in fresh.named_parameters())
