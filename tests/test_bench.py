"""``l2lbench bench`` on tiny settings: it runs and its report has every field (no timing
assertions: times depend on the machine)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import pytest

from l2lbench.cli import bench as bench_command
from l2lbench.bench.figures import summary
from l2lbench.bench.format import format_text
from l2lbench.bench.memory import MemoryProbe
from l2lbench.bench.spec import BenchSpec

TINY = ["--task", "synthetic", "--steps", "3", "--seeds", "1,2", "--repeats", "2", "--meta-steps", "4",
        "--meta-unroll", "2", "--memory-steps", "4", "--memory-unroll", "2", "--threads", "1"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_command.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bench_command.run(_parse(TINY + ["--optimizers", "sgd,lstm", "--format", "json", "--memory-in-process",
                                                "--data-dir", str(tmp_path_factory.mktemp("data"))]))
    assert code == 0
    return json.loads(out.getvalue())


def _is_summary(value) -> bool:
    return set(value) == {"min", "median", "values"} and value["min"] <= value["median"] and len(value["values"]) == 2


def test_json_report_has_every_field(report):
    assert report["schema"] == "l2lbench-bench/1"
    assert report["task"].startswith("synthetic-mlp784x32x10")
    assert (report["steps"], report["seeds"], report["repeats"]) == (3, [1, 2], 2)
    assert report["learner_parameters"] == 25450
    assert report["provenance"]["torch_threads"] == 1 and "memory_method" in report
    assert isinstance(report["malloc_keeps_freed_memory"], bool)
    # The LSTM's meta-test ran through its C kernel, or the report says why not.
    assert report["native_kernels"]["lstm"] == "native" or "PyTorch form" in report["native_kernels"]["lstm"]
    for name in ("torch-sgd", "torch-adam"):
        assert _is_summary(report["reference"][name]["ms_per_step"])
    assert _is_summary(report["evaluation"]["ms_per_evaluation"])
    assert set(report["optimizers"]) == {"sgd", "lstm"}
    for name, entry in report["optimizers"].items():
        assert set(entry["meta_test"]) == {"1", "2"}
        for key, figures in entry["meta_test"].items():
            assert figures["seeds"] == int(key)
            for field in ("ms_per_seed_step", "ms_per_step_all_seeds"):
                assert _is_summary(figures[field]), (name, key, field)
            for field in ("ratio_to_torch_sgd", "ratio_to_torch_adam"):
                ratio = figures[field]
                assert ratio["of_min"] > 0 and ratio["of_median"] > 0 and len(ratio["per_repeat"]) == 2, (name, key, field)
        memory = entry["meta_test_memory"]
        assert memory["steps"] == 4
        for field in ("rss_before_mb", "rss_after_mb", "rss_growth_mb", "peak_rss_mb", "peak_growth_mb"):
            assert field in memory
    sgd, lstm = report["optimizers"]["sgd"], report["optimizers"]["lstm"]
    assert sgd["meta_test"]["2"]["execution"] == "seeds as coordinates"
    assert lstm["meta_test"]["2"]["execution"].startswith("seeds as coordinates")
    assert sgd["meta_training"] is None and sgd["meta_training_memory"] is None
    assert lstm["learned"] and lstm["meta_training"]["unroll"] == 2
    assert _is_summary(lstm["meta_training"]["ms_per_learner_step"])
    assert lstm["meta_training_memory"]["unroll"] == 2 and lstm["meta_training_memory"]["peak_rss_mb"] > 0
    assert lstm["meta_training_memory"]["process"] == "this"


def test_text_report_names_every_figure(report):
    text = format_text(report)
    for needle in ("torch.optim.SGD", "torch.optim.Adam", "meta-test ms/seed-step", "x torch SGD",
                   "meta-train ms/learner step", "unroll 2", "RSS growth, 4 steps", "validation examples", "lstm", "sgd", "C kernels: lstm"):
        assert needle in text, needle


def test_meta_training_memory_in_a_fresh_process(tmp_path):
    import torch

    from l2lbench.bench.memory import meta_training_memory
    from l2lbench.bench.workloads import meta_training_spec
    from l2lbench.optimizers.lstm import lstm

    task = bench_command.resolve_task("synthetic", data_dir=tmp_path)
    spec = meta_training_spec(task, 4, 2)
    figures = meta_training_memory(lstm(), spec, data_dir=tmp_path, device=torch.device("cpu"), probe=MemoryProbe(),
                                   fresh_process=True)
    assert figures["process"] == "fresh", figures
    assert figures["peak_rss_mb"] >= figures["rss_before_mb"] > 0


def test_memory_probe_and_summary():
    probe = MemoryProbe()
    figures = probe.measure(lambda: bytearray(8 * 1024 * 1024))
    assert figures["peak_rss_mb"] > 0 and probe.method
    assert summary([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "values": [3.0, 1.0, 2.0]}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--seeds", "0,8"], "invalid seed counts '0,8'"),
        (["--steps", "-1"], "invalid value '-1'"),
        (["--optimizers", ","], "invalid list ','"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        _parse(argv)
    assert message in capsys.readouterr().err


def test_bad_task_and_spec():
    from l2lbench.errors import UsageError

    with pytest.raises(UsageError, match="unknown task 'nope'"):
        bench_command.resolve_task("nope", data_dir=None)
    with pytest.raises(ValueError, match="invalid repeats: 0"):
        BenchSpec(task=bench_command.resolve_task("synthetic", data_dir=None), repeats=0)
