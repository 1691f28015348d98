"""FunctionalAdapter as a torch.optim citizen: parameter groups, schedulers, state_dict, repr,
held against torch.optim's own optimisers."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from l2lbench.plugin.adapter import FunctionalAdapter
from l2lbench.plugin.learned import bind_fresh
from l2lbench.optimizers.adam import adam, adamw
from l2lbench.optimizers.lstm import lstm
from l2lbench.optimizers.sgd import sgd


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _groups(model, **second):
    return [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), **second}]


def _train(model, opt, schedule, steps=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    lrs = []
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=generator), torch.randint(3, (8,), generator=generator)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        schedule.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    return lrs


@pytest.mark.parametrize("ours,theirs,scheduler", [
    (lambda: adam(lr=0.01), lambda g: torch.optim.Adam(g, lr=0.01),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4)),
    (lambda: adamw(lr=0.01), lambda g: torch.optim.AdamW(g, lr=0.01),
     lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
    (lambda: sgd(lr=0.1, momentum=0.9), lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9),
     lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=3)),
], ids=["adam-cosine", "adamw-step", "momentum-linear-warmup"])
def test_two_groups_and_a_scheduler_follow_torch_optim(ours, theirs, scheduler):
    """Group 2 has its own lr and weight decay; the scheduler moves both groups' lr."""
    second = {"lr": 0.03, "weight_decay": 0.05}
    a, b = _model(), _model()
    opt_a = FunctionalAdapter(_groups(a, **second), ours())
    opt_b = theirs(_groups(b, **second))
    lrs_a = _train(a, opt_a, scheduler(opt_a))
    lrs_b = _train(b, opt_b, scheduler(opt_b))
    assert sum(lrs_a, []) == pytest.approx(sum(lrs_b, []))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_cosine_schedule_by_hand():
    model = _model()
    opt = FunctionalAdapter(model.parameters(), sgd(lr=0.2))
    lrs = _train(model, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4), steps=4)
    assert [lr[0] for lr in lrs] == pytest.approx([0.2 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(1, 5)])


def test_a_learned_optimisers_step_is_scaled_by_its_group_lr():
    rule = bind_fresh(lstm(), seed=0)
    x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    moved = []
    for lr in (1.0, 0.25):
        model = _model()
        before = [p.detach().clone() for p in model.parameters()]
        opt = FunctionalAdapter([{"params": model.parameters(), "lr": lr}], rule)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        moved.append([p.detach() - b for p, b in zip(model.parameters(), before)])
    assert opt.reference_lr == 1.0
    for full, quarter in zip(*moved):
        torch.testing.assert_close(quarter, 0.25 * full)


def test_state_dict_round_trips_into_a_fresh_instance_with_its_scheduler():
    def make(model):
        opt = FunctionalAdapter(model.named_parameters(), adam(lr=0.01))
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    straight = _model()
    _train(straight, *make(straight), steps=6)
    first = _model()
    opt, schedule = make(first)
    _train(first, opt, schedule, steps=3)
    saved, saved_schedule = copy.deepcopy(opt.state_dict()), copy.deepcopy(schedule.state_dict())
    assert set(saved["functional_states"][0]) >= {"mu/0.weight", "nu/2.bias"}  # keyed by parameter name
    resumed = _model()
    resumed.load_state_dict(first.state_dict())
    opt2, schedule2 = make(resumed)
    opt2.load_state_dict(saved)
    schedule2.load_state_dict(saved_schedule)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    # The same data stream as the uninterrupted run: draws 4-6 of the same generator.
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        torch.randn(8, 6, generator=generator), torch.randint(3, (8,), generator=generator)
    for _ in range(3):
        x, y = torch.randn(8, 6, generator=generator), torch.randint(3, (8,), generator=generator)
        opt2.zero_grad()
        torch.nn.functional.cross_entropy(resumed(x), y).backward()
        opt2.step()
        schedule2.step()
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)


def test_state_of_other_parameters_is_refused():
    opt = FunctionalAdapter(_model().named_parameters(), adam())
    other = FunctionalAdapter([{"params": [torch.nn.Parameter(torch.zeros(2))]}], adam())
    with pytest.raises(ValueError, match="parameter group 0 holds"):
        opt.load_state_dict(other.state_dict())


def test_repr_shows_the_rule_and_each_group():
    model = _model()
    text = repr(FunctionalAdapter(_groups(model, lr=0.5), adam(lr=0.01)))
    assert text.startswith("FunctionalAdapter(Adam(lr=0.01")
    assert "Parameter Group 0" in text and "Parameter Group 1" in text and "    lr: 0.5" in text
