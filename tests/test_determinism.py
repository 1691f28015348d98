"""A run's numbers depend on its key alone: not on --workers, the backend, the process
that ran it or torch's thread count; and where a factor does change them (the C kernels
against their PyTorch form), it is part of the key."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from l2lbench.cli import main
from l2lbench.fastpath.native import build
from l2lbench.store.runs import ResultsStore


def _runs(results) -> dict[tuple, tuple]:
    db = sqlite3.connect(results / "l2lbench.sqlite")
    rows = db.execute("SELECT task_hash, optimizer_hash, seed, status, train_loss, test_loss, test_accuracy FROM runs")
    return {row[:3]: row[3:] for row in rows}


def test_the_smoke_suite_gives_identical_curves_on_any_workers_and_backend(tmp_path, capsys):
    distributed = pytest.importorskip("dask.distributed")
    smoke = ["run", "--suite", "smoke", "--seeds", "2"]
    torch.set_num_threads(2)  # this process's own count must not leak into the runs either
    assert main([*smoke, "--workers", "1", "--results", str(tmp_path / "w1")]) == 0
    assert main([*smoke, "--workers", "2", "--results", str(tmp_path / "w2")]) == 0
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        assert main([*smoke, "--backend", "dask", "--scheduler", cluster.scheduler_address,
                     "--results", str(tmp_path / "dask")]) == 0
    capsys.readouterr()
    one, two, dask = (_runs(tmp_path / name) for name in ("w1", "w2", "dask"))
    assert len(one) == 8 * 2 * 2 and {row[0] for row in one.values()} == {"ok"}  # optimisers x tasks x seeds
    assert one.keys() == two.keys() == dask.keys()
    # Bit for bit, learned optimisers (meta-trained in each setting) included.
    assert [k for k in one if one[k] != two[k]] == []
    assert [k for k in one if one[k] != dask[k]] == []
    records = ResultsStore(tmp_path / "w2").runs()
    assert {r.provenance["torch_threads"] for r in records} == {1}


def test_the_kernel_switch_is_part_of_a_learned_optimizers_key(tiny_suite, tiny_meta, tmp_path, monkeypatch, capsys):
    if build.load("lstm") is None:
        pytest.skip(f"the C kernels cannot run here: {build.unavailable_reason('lstm')}")
    suite = tiny_suite(tiny_meta)
    text = open(suite).read().replace('optimizers = ["sgd", "adam"]', 'optimizers = ["sgd", "lstm"]')
    open(suite, "w").write(text)
    results = tmp_path / "r"
    assert main(["run", "--suite", suite, "--results", str(results)]) == 0
    on = {r.optimizer_name: r.optimizer_config.get("numerics") for r in ResultsStore(results).runs()}
    monkeypatch.setenv(build.SWITCH_ENV, "0")
    build.forget()
    try:
        assert main(["run", "--suite", suite, "--results", str(results)]) == 0
    finally:
        monkeypatch.delenv(build.SWITCH_ENV)
        build.forget()
    out = capsys.readouterr().out
    # sgd's numbers do not depend on the switch; the LSTM's are recomputed under their own key.
    assert "2 runs already stored (skipped), 2 to run" in out and "lstm: meta-training on" in out.split("suite")[-1]
    rows = ResultsStore(results).runs()
    assert sorted((r.optimizer_name, r.optimizer_config["numerics"]) for r in rows if r.seed == 0) == sorted(
        [("sgd", "cpu"), ("lstm", "cpu+native"), ("lstm", "cpu+pytorch")]
    )
    assert on == {"sgd": "cpu", "lstm": "cpu+native"}


def test_the_reference_switch_is_part_of_every_optimizers_key(tiny_suite, tmp_path, monkeypatch, capsys):
    """With every fast path off the plain references run: another rounding, another key,
    for hand-designed optimisers too (their seeds run one by one through autograd)."""
    suite, results = tiny_suite(), tmp_path / "r"
    assert main(["run", "--suite", suite, "--results", str(results), "--optimizers", "sgd"]) == 0
    monkeypatch.setenv("L2LBENCH_FASTPATH", "0")
    assert main(["run", "--suite", suite, "--results", str(results), "--optimizers", "sgd"]) == 0
    assert "0 runs already stored" in capsys.readouterr().out.split("suite")[-1]
    rows = ResultsStore(results).runs()
    assert sorted({r.optimizer_config["numerics"] for r in rows}) == ["cpu", "cpu+reference"]
    by_numerics = {}
    for r in rows:
        by_numerics.setdefault(r.optimizer_config["numerics"], {})[r.seed] = r.test_loss
    for seed, curve in by_numerics["cpu"].items():  # the same numbers to float rounding
        assert curve == pytest.approx(by_numerics["cpu+reference"][seed], rel=1e-5, abs=1e-6)
