"""The built-in suites: what they contain, that they fail fast without their data, and
that they run end to end (on tiny files in the original formats), in parallel too."""

from __future__ import annotations

import pytest

from l2lbench.cli import main
from l2lbench.plugin.registry import OptimizerRegistry
from l2lbench.plan.runs import suite_runs
from l2lbench.store.runs import ResultsStore
from l2lbench.spec.suite import builtin_suites, load_suite
from l2lbench.tasks.datasets import CHECKSUMS, clear_cache

EXPECTED = {"smoke", "same-domain", "domain-shift", "paper", "rotated-mnist", "arch-shift", "mnist-tuned"}
TINY = ["--steps", "3", "--seeds", "2", "--meta-trials", "2", "--meta-steps", "2"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def _learned(suite_name):
    registry = OptimizerRegistry.default(entry_points=False)
    return [(t, o) for t, o in suite_runs(load_suite(suite_name), registry) if o.meta_training is not None]


def test_the_long_horizon_suite_meta_trains_each_learned_optimiser_both_ways():
    """TBPTT at the papers' horizon 100 and PES at 1000, 3 meta-training seeds each, meta-tested
    for 2000 steps beside tuned baselines (issue 17)."""
    suite = load_suite("long-horizon")
    assert suite.ruleset == "tuned" and [t.steps for t in suite.tasks] == [2000]
    trainings = {}
    for _, o in _learned("long-horizon"):
        m = o.meta_training
        trainings.setdefault((o.entry.name, m.estimator, m.tasks[0].steps), set()).add(m.seed)
    assert trainings == {(entry, estimator, horizon): {0, 1, 2}
                         for entry in ("lstm", "mtl2l", "mlp-lopt")
                         for estimator, horizon in (("tbptt", 100), ("pes", 1000))}


def test_every_suite_is_listed_and_valid():
    assert EXPECTED <= set(builtin_suites())
    for name in EXPECTED:
        suite = load_suite(name)
        assert suite.description and suite.seeds == (3 if name == "smoke" else 8)
        assert suite.ruleset == ("tuned" if name == "mnist-tuned" else "fixed")
        learned = _learned(name)
        assert {o.entry.name for _, o in learned} == ({"lstm", "mtl2l", "mlp-lopt"} if name == "smoke" else {"lstm", "mtl2l"}), name
        if name != "smoke":
            assert all(t.steps == 1000 for t in suite.tasks)
            assert all(o.meta_training.horizon == 100 for _, o in learned)  # the paper's horizon


def test_same_domain_meta_trains_on_each_test_dataset():
    for task, optimizer in _learned("same-domain"):
        assert optimizer.meta_training.datasets == [task.dataset.name]
        assert optimizer.meta_training.trials == 20 and optimizer.meta_training.unroll == 5


def test_domain_shift_is_fair_and_tests_in_domain_too():
    learned = _learned("domain-shift")
    assert {o.meta_training.hash for _, o in learned if o.entry.name == "lstm"} == {
        o.meta_training.hash for _, o in learned if o.entry.name == "mtl2l"
    }
    specs = {o.meta_training for _, o in learned}
    assert sorted(spec.seed for spec in specs) == [0, 1, 2]  # meta_seeds = 3: one spec per meta-training seed
    assert all(spec.datasets == ["fashion-mnist", "kmnist"] and spec.trials == 30 for spec in specs)
    assert [t.dataset.name for t in load_suite("domain-shift").tasks] == ["fashion-mnist", "kmnist", "cifar10grey"]


def test_paper_suite_is_the_paper():
    by = {(t.dataset.name, o.name): o for t, o in _learned("paper")}
    assert by[("cifar10grey", "lstm")].meta_training.datasets == ["kmnist"]
    mtl2l = by[("cifar10grey", "mtl2l")]
    assert mtl2l.meta_training.datasets == ["fashion-mnist", "kmnist"] and mtl2l.meta_training.trials == 30
    assert mtl2l.hparams["smoothing"] == 0.9  # Eq. 17 in Scenario 2
    for name in ("mnist", "fashion-mnist", "kmnist"):
        assert by[(name, "lstm")].meta_training.datasets == [name]
        assert by[(name, "mtl2l")].hparams["smoothing"] == 0.0
    registry = OptimizerRegistry.default(entry_points=False)
    baselines = {o.name: o.hparams for _, o in suite_runs(load_suite("paper"), registry) if o.meta_training is None}
    assert baselines == {"sgd": baselines["sgd"], "momentum": baselines["momentum"], "adam": baselines["adam"]}
    assert {h["lr"] for h in baselines.values()} == {0.01} and baselines["momentum"]["momentum"] == 0.9


def test_rotated_and_arch_shift_domains():
    rotated = _learned("rotated-mnist")
    assert {tuple(o.meta_training.datasets) for _, o in rotated} == {("rotmnist0", "rotmnist15", "rotmnist30")}
    names = [t.dataset.name for t in load_suite("rotated-mnist").tasks]
    assert names == ["rotmnist0", "rotmnist15", "rotmnist30", "rotmnist45", "rotmnist60", "rotmnist75", "permmnist-s0"]
    arch = load_suite("arch-shift")
    labels = [t.learner.label((1, 28, 28), 10) for t in arch.tasks]
    assert labels == ["mlp784x32x10-relu", "mlp784x32x10-tanh", "mlp784x128x10-relu", "mlp784x32x32x10-relu", "cnn8x16-relu"]


@pytest.mark.parametrize("suite,missing", [("domain-shift", "cifar10-grey"), ("same-domain", "fashion-mnist"),
                                           ("paper", "cifar10-grey"), ("rotated-mnist", "mnist")])
def test_suites_fail_fast_without_their_data(suite, missing, tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", "--suite", suite, "--results", str(results), "--data-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"dataset '{missing}'" in err and "l2lbench data import" in err
    assert not results.exists()  # nothing computed, nothing written


@pytest.fixture
def fake_domains(tmp_path, monkeypatch, dataset_files):
    """Fashion-MNIST, KMNIST and CIFAR-10 as tiny files in their original formats."""
    root = tmp_path / "data"
    for folder, seed in (("FashionMNIST", 1), ("KMNIST", 2)):
        arrays = dataset_files.make_idx_arrays(n_train=160, n_test=20, seed=seed)
        monkeypatch.setitem(CHECKSUMS, folder, dataset_files.write_idx_dataset(root, folder, arrays))
    # 160 training images each: 134 after the validation split, above the default batch of 128.
    cifar = dataset_files.make_cifar_arrays(per_batch=32, n_test=20)
    monkeypatch.setitem(CHECKSUMS, "CIFAR10", dataset_files.write_cifar10(root, cifar))
    return root


def test_domain_shift_end_to_end_on_original_format_files(fake_domains, tmp_path, capsys):
    results = tmp_path / "results"
    args = ["run", "--suite", "domain-shift", *TINY, "--meta-seeds", "1", "--results", str(results),
            "--data-dir", str(fake_domains)]
    assert main(args) == 0
    runs = ResultsStore(results).runs()
    assert len(runs) == 3 * 5 * 2 and all(r.status == "ok" for r in runs)
    assert {r.task_name.split("-mlp")[0] for r in runs} == {"fashion-mnist", "kmnist", "cifar10grey"}
    # One meta-training per learned optimiser, shared by the three tasks.
    assert len(list((results / "checkpoints").glob("*.pt"))) == 2
    learned = [r for r in runs if r.optimizer_name in ("lstm", "mtl2l")]
    assert {tuple(r.provenance["meta_training"]["datasets"]) for r in learned} == {("fashion-mnist", "kmnist")}
    assert "meta-trained in" in capsys.readouterr().out
    assert main(args) == 0  # resumable: everything is stored, nothing recomputed
    assert "30 runs already stored (skipped), 0 to run" in capsys.readouterr().out


def _curves(results):
    return {(r.task_name, r.optimizer_name, r.seed): (r.train_loss, r.test_loss) for r in ResultsStore(results).runs()}


def test_parallel_workers_are_reproducible_and_match_in_process(tiny_suite, tmp_path, capsys, monkeypatch):
    suite = tiny_suite()
    runs = {}
    for name, workers in (("a", "2"), ("b", "2"), ("c", "1")):
        results = tmp_path / name
        assert main(["run", "--suite", suite, "--workers", workers, "--results", str(results)]) == 0
        runs[name] = _curves(results)
    assert "on 2 worker processes" in capsys.readouterr().out
    assert runs["a"] == runs["b"]  # the same command gives the same curves
    assert runs["a"].keys() == runs["c"].keys()
    for key, (train, test) in runs["a"].items():
        assert train == pytest.approx(runs["c"][key][0], rel=1e-5, abs=1e-6)
        assert test == pytest.approx(runs["c"][key][1], rel=1e-5, abs=1e-6)


def test_plugins_from_files_work_on_worker_processes(tiny_suite, tmp_path):
    from pathlib import Path

    plugins = str(Path(__file__).with_name("plugins.py"))
    results = tmp_path / "r"
    code = main(["run", "--suite", tiny_suite(), "--workers", "2", "--plugin", plugins,
                 "--optimizers", "sgd,nan-at", "--results", str(results)])
    assert code == 0
    statuses = {(r.optimizer_name, r.status) for r in ResultsStore(results).runs()}
    assert statuses == {("sgd", "ok"), ("nan-at", "diverged")}


def test_dask_backend_on_a_local_cluster(tiny_suite, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        results = tmp_path / "dask"
        assert main(["run", "--suite", tiny_suite(), "--backend", "dask", "--scheduler", cluster.scheduler_address,
                     "--results", str(results)]) == 0
    assert main(["run", "--suite", tiny_suite(), "--results", str(tmp_path / "local")]) == 0
    assert _curves(results).keys() == _curves(tmp_path / "local").keys()


@pytest.mark.parametrize("args,message", [
    (["--backend", "spark"], "unknown backend 'spark'; expected one of: local, dask"),
    (["--backend", "dask"], "the dask backend needs --scheduler ADDRESS"),
    (["--workers", "0"], "argument --workers: invalid value '0'"),
    (["--backend", "dask", "--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"),
])
def test_bad_execution_options(args, message, tiny_suite, tmp_path, capsys):
    assert main(["run", "--suite", tiny_suite(), *args, "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
