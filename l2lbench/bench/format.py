"""A bench report (:func:`l2lbench.bench.run.run_bench`) as text tables or as JSON."""

from __future__ import annotations

import json
import math
from typing import Any

from tabulate import tabulate


def format_json(report: dict[str, Any]) -> str:
    """The report as indented JSON, every figure as measured."""
    return json.dumps(report, indent=2)


def format_text(report: dict[str, Any]) -> str:
    """The report as a few aligned tables (min / median)."""

    def mm(stat: dict[str, Any] | None, digits: int = 2) -> str:
        if stat is None:
            return "-"
        return f"{stat['min']:.{digits}f} / {stat['median']:.{digits}f}"

    prov = report["provenance"]
    lines = [
        f"l2lbench bench: {report['task']} ({report['learner_parameters']:,} learner parameters), "
        f"{report['steps']} steps x {report['repeats']} repeats, {prov['device']}, {prov['torch_threads']} threads, "
        f"torch {prov['torch']}",
        "times in ms, min / median over repeats; ratios to the bare loop: of the minima / of the medians",
        "",
    ]
    rows = [[name, ref["optimizer"], mm(ref["ms_per_step"], 3)] for name, ref in report["reference"].items()]
    lines.append(tabulate(rows, headers=["reference", "bare hand-written loop", "ms/step"], tablefmt="simple"))
    lines.append("")
    rows = []
    for name, entry in report["optimizers"].items():
        for key, m in entry["meta_test"].items():
            rows.append([
                name if key == next(iter(entry["meta_test"])) else "",
                f"{m['seeds']} ({m['execution']})",
                mm(m["ms_per_seed_step"], 3),
                _ratio(m["ratio_to_torch_sgd"]),
                _ratio(m["ratio_to_torch_adam"]),
            ])
    lines.append(tabulate(rows, headers=["optimizer", "seeds", "meta-test ms/seed-step", "x torch SGD", "x torch Adam"],
                          tablefmt="simple"))
    lines.append("")
    rows = []
    for name, entry in report["optimizers"].items():
        memory = entry["meta_test_memory"]
        training = entry["meta_training"]
        training_memory = entry["meta_training_memory"]
        rows.append([
            name,
            _fmt(memory["rss_growth_mb"]),
            _fmt(memory["peak_growth_mb"]),
            mm(training["ms_per_learner_step"]) if training else "-",
            f"{_fmt(training_memory['peak_rss_mb'], 0)} ({training_memory['process']} process)" if training_memory else "-",
            _fmt(training_memory["peak_growth_mb"], 0) if training_memory else "-",
        ])
    first = next(iter(report["optimizers"].values()), None)
    steps = first["meta_test_memory"]["steps"] if first else "-"
    unroll = next((e["meta_training_memory"]["unroll"] for e in report["optimizers"].values() if e["meta_training_memory"]), "-")
    lines.append(tabulate(rows, headers=[
        "optimizer", f"RSS growth, {steps} steps (MB)", "peak growth (MB)", "meta-train ms/learner step",
        f"meta-train peak RSS, unroll {unroll} (MB)", "growth after imports (MB)",
    ], tablefmt="simple"))
    lines.append("")
    lines.append(f"one evaluation ({report['evaluation']['test_examples']} test + "
                 f"{report['evaluation']['validation_examples']} validation examples, 1 seed): "
                 f"{mm(report['evaluation']['ms_per_evaluation'])} ms, not included above")
    lines.append(f"memory: {report['memory_method']}; meta-test growth measured in this process after the timed runs")
    kernels = report.get("native_kernels") or {}
    if kernels:
        lines.append("C kernels: " + "; ".join(f"{name}: {how}" for name, how in kernels.items()))
    return "\n".join(lines)


def _ratio(value: dict[str, Any]) -> str:
    return f"{value['of_min']:.2f} / {value['of_median']:.2f}"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
