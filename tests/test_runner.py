"""Paired seeds, batched == per-seed, divergence and failures recorded, skip logic."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from l2lbench.plugin.registry import OptimizerRegistry
from l2lbench.spec.optimizer import OptimizerSpec
from l2lbench.execute.device import resolve_device
from l2lbench.execute.runner import execute_job, run_jobs
from l2lbench.plan.runs import RunJob, plan
from l2lbench.store.runs import ResultsStore
from l2lbench.spec.suite import load_suite
from l2lbench.errors import UsageError

PLUGINS = str(Path(__file__).with_name("plugins.py"))
CPU = torch.device("cpu")


@pytest.fixture
def setup(tiny_suite, tmp_path):
    suite = load_suite(tiny_suite())
    registry = OptimizerRegistry.default([PLUGINS], entry_points=False)
    assert registry.problems == []
    return suite.tasks[0], registry, tmp_path / "data"


def _run(task, registry, data_dir, name, seeds=(0, 1), vectorize=True, **hparams):
    spec = OptimizerSpec(name, tuple(hparams.items()))
    return execute_job(RunJob(task, registry.resolve(spec), tuple(seeds)), data_dir=data_dir, device=CPU, vectorize=vectorize)


def test_seeds_are_paired_across_optimizers(setup):
    import sys

    task, registry, data_dir = setup
    module = next(m for n, m in sys.modules.items() if n.startswith("l2lbench_plugin_plugins"))
    module.RECORDED.clear()
    _run(task, registry, data_dir, "recorder", lr=0.1)
    first = list(module.RECORDED)
    module.RECORDED.clear()
    _run(task, registry, data_dir, "recorder", lr=0.5)
    second = list(module.RECORDED)
    strip = lambda rows: [r[:1] + r[2:] for r in rows]  # noqa: E731  (drop the lr)
    # Same initialisation and the same batch at every step, for every seed...
    assert strip(first) == strip(second)
    inits = [r for r in first if r[0] == "init"]
    batches = [r for r in first if r[0] == "batch"]
    # ...while different seeds see different initialisations and batches.
    assert inits[0] != inits[1]
    assert batches[: task.steps] != batches[task.steps :]
    # Built-in optimisers see the same thing: equal loss at step 0 and equal first evaluation.
    sgd, adam = _run(task, registry, data_dir, "sgd"), _run(task, registry, data_dir, "adam")
    for a, b in zip(sgd, adam):
        assert a.train_loss[0] == b.train_loss[0] and a.test_loss[0] == b.test_loss[0]
    assert sgd[0].train_loss[0] != sgd[1].train_loss[0]


def test_runs_are_reproducible(setup):
    task, registry, data_dir = setup
    a, b = _run(task, registry, data_dir, "adam"), _run(task, registry, data_dir, "adam")
    assert [r.train_loss for r in a] == [r.train_loss for r in b]
    assert [r.test_loss for r in a] == [r.test_loss for r in b]


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "rmsprop", "adamw"])
def test_batched_seeds_match_one_by_one(setup, name):
    task, registry, data_dir = setup
    batched = _run(task, registry, data_dir, name, seeds=(0, 1, 2))
    single = _run(task, registry, data_dir, name, seeds=(0, 1, 2), vectorize=False)
    assert batched[0].provenance["execution"] == "seeds as coordinates over 3 seeds"
    assert single[0].provenance["execution"] == "per seed"
    for b, s in zip(batched, single):
        assert b.seed == s.seed and b.eval_steps == s.eval_steps == [0, 5, 10, 12]
        assert max(abs(x - y) for x, y in zip(b.train_loss, s.train_loss)) < 1e-5
        assert max(abs(x - y) for x, y in zip(b.test_loss, s.test_loss)) < 1e-5


def test_nan_is_recorded_as_divergence_with_its_step(setup):
    task, registry, data_dir = setup
    records = _run(task, registry, data_dir, "nan-at", step=3)
    for r in records:
        assert r.status == "diverged"
        # The update at step 3 produced NaN parameters, so the loss measured at step 4
        # (parameters after 4 updates) is the first non-finite one.
        assert r.diverged_step == 4
        assert len(r.train_loss) == 4 and all(math.isfinite(v) for v in r.train_loss)
        assert r.eval_steps == [0]
    assert records[0].provenance["execution"] == "batched over 2 seeds"


def test_plugin_exception_is_a_failed_run_with_its_message(setup):
    task, registry, data_dir = setup
    records = _run(task, registry, data_dir, "raises")
    assert [r.status for r in records] == ["failed", "failed"]
    assert records[0].error == "RuntimeError: plug-in exploded at update"
    assert "per seed (batched run failed" in records[0].provenance["execution"]
    assert "Traceback" in records[0].provenance["traceback"]


def test_store_skips_finished_runs_and_retries_failed(setup, tmp_path):
    task, registry, data_dir = setup
    store = ResultsStore(tmp_path / "results")
    optimizers = [registry.resolve("sgd"), registry.resolve("raises")]
    jobs, skipped = plan([(task, o) for o in optimizers], 2, store)
    assert skipped == 0 and [len(j.seeds) for j in jobs] == [2, 2]
    summary = run_jobs(jobs, store, data_dir=data_dir, device=CPU)
    assert summary.ok == 2 and len(summary.failed) == 2
    jobs, skipped = plan([(task, o) for o in optimizers], 3, store)
    # sgd: seeds 0-1 stored, only seed 2 is new; the failed plug-in is retried in full.
    assert skipped == 2
    assert [(j.optimizer.name, j.seeds) for j in jobs] == [("sgd", (2,)), ("raises", (0, 1, 2))]


def test_a_failing_optimizer_does_not_stop_the_others(setup, tmp_path):
    task, registry, data_dir = setup
    store = ResultsStore(tmp_path / "results")
    jobs, _ = plan([(task, registry.resolve("raises")), (task, registry.resolve("adam"))], 2, store)
    summary = run_jobs(jobs, store, data_dir=data_dir, device=CPU)
    assert summary.ok == 2 and len(summary.failed) == 2
    assert {r.status for r in store.runs()} == {"ok", "failed"}


def test_unavailable_device_is_a_usage_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match="device 'cuda' is not available here"):
        resolve_device("cuda")
    with pytest.raises(UsageError, match="invalid device 'tpu'"):
        resolve_device("tpu")


def test_records_name_only_the_c_kernels_their_job_asked_for(setup):
    """A worker that ran the LSTM optimiser before does not credit its kernel to SGD."""
    from l2lbench.fastpath.native import build
    from l2lbench.plugin.base import StepContext
    from l2lbench.plugin.learned import bind_fresh
    from l2lbench.optimizers.lstm import lstm

    opt, params = bind_fresh(lstm()), {"w": torch.zeros(8)}
    with torch.no_grad():
        opt.update({"w": torch.ones(8)}, opt.init(params), params, StepContext(0))
    assert "lstm" in build.status()
    task, registry, data_dir = setup
    assert all("native_kernels" not in r.provenance for r in _run(task, registry, data_dir, "sgd"))
