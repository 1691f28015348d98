"""Every measurement of ``l2lbench bench``, interleaved repeat by repeat, as one JSON-ready
report (see :mod:`l2lbench.bench` for what is measured and how)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from l2lbench.bench.figures import ratio, summary
from l2lbench.bench.memory import MemoryProbe, meta_training_memory
from l2lbench.bench.spec import BenchSpec
from l2lbench.bench.workloads import (
    REFERENCE_LR,
    REFERENCES,
    bare_loop,
    meta_test,
    meta_training_spec,
    meta_training_step,
    timing_task,
)
from l2lbench.execute.learner import FunctionalLearner
from l2lbench.execute.metatest import PreparedData, evaluate, execution_mode, run_seeds
from l2lbench.fastpath.native.build import start_recording as start_native_recording
from l2lbench.fastpath.native.build import status as native_status
from l2lbench.plugin.learned import bind_fresh, is_learned
from l2lbench.store.provenance import provenance

#: The report's format; :mod:`l2lbench.bench.format` reads it.
SCHEMA = "l2lbench-bench/1"


def run_bench(
    spec: BenchSpec,
    optimizers: dict[str, Any],
    *,
    data_dir: Path,
    device: torch.device,
    keep_freed: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Measure everything :class:`BenchSpec` names for ``optimizers`` (name -> built plug-in).

    ``keep_freed`` says that this process called :func:`~l2lbench.fastpath.memory.keep_freed_memory`
    (the command does, as ``l2lbench run`` should); it is recorded, and a fresh process
    measuring meta-training memory does the same.

    Returns:
        The report: a JSON-ready dict (``schema`` ``l2lbench-bench/1``).
    """
    task = spec.task
    timed = timing_task(task, spec.steps)
    learner = FunctionalLearner(task.learner.build(task.dataset.input_shape, task.dataset.num_classes))
    splits = task.dataset.load(data_dir)
    data = PreparedData.from_splits(splits, timed, device)
    full_data = PreparedData.from_splits(splits, task, device)
    bound = {name: bind_fresh(opt) for name, opt in optimizers.items()}
    learned = [name for name, opt in optimizers.items() if is_learned(opt)]
    probe = MemoryProbe()
    start_native_recording()  # the report names the C kernels this benchmark asked for

    log(f"warming up on {timed.name} ...")
    warm = timing_task(task, min(spec.steps, 5))
    for reference in REFERENCES:
        bare_loop(reference, warm, learner, data, device)
    for name, opt in bound.items():
        for seeds in spec.seeds:
            meta_test(warm, opt, learner, data, seeds, device)
    for name in learned:
        meta_training_step(optimizers[name], task, min(spec.meta_steps, 4), 2, data_dir, device)

    bare: dict[str, list[float]] = {r: [] for r in REFERENCES}
    tested: dict[tuple[str, int], list[float]] = {(n, s): [] for n in bound for s in spec.seeds}
    trained: dict[str, list[float]] = {n: [] for n in learned}
    for repeat in range(spec.repeats):
        log(f"repeat {repeat + 1}/{spec.repeats}")
        for reference in REFERENCES:
            bare[reference].append(bare_loop(reference, timed, learner, data, device) / spec.steps * 1e3)
        for name, opt in bound.items():
            for seeds in spec.seeds:
                seconds = meta_test(timed, opt, learner, data, seeds, device)
                tested[name, seeds].append(seconds / (spec.steps * seeds) * 1e3)
            if name in trained:
                seconds = meta_training_step(optimizers[name], task, spec.meta_steps, spec.meta_unroll, data_dir, device)
                trained[name].append(seconds * 1e3)

    log("timing one evaluation (test and validation splits) ...")
    params = learner.init(torch.Generator().manual_seed(0), device)
    evals = []
    with torch.no_grad():
        for _ in range(spec.repeats):
            start = time.perf_counter()
            loss, *_ = evaluate(learner, params, full_data)
            float(loss)
            evals.append((time.perf_counter() - start) * 1e3)

    log(f"memory: meta-test of {spec.memory_steps} steps" + (f", meta-training with unroll {spec.memory_unroll}" if learned else ""))
    long_task = dataclasses.replace(task, steps=spec.memory_steps)
    memory_test = {
        name: probe.measure(lambda opt=opt: run_seeds(long_task, opt, learner, full_data, [0], device=device))
        for name, opt in bound.items()
    }
    memory_train = {
        name: meta_training_memory(optimizers[name], meta_training_spec(task, 2 * spec.memory_unroll, spec.memory_unroll),
                                   data_dir=data_dir, device=device, probe=probe, fresh_process=spec.fresh_process,
                                   keep_freed=keep_freed)
        for name in learned
    }

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "task": timed.name,
        "task_config": task.config(),
        "learner_parameters": learner.num_parameters(),
        "steps": spec.steps,
        "seeds": list(spec.seeds),
        "repeats": spec.repeats,
        "units": {"time": "ms", "memory": "MB (2**20 bytes)"},
        "memory_method": probe.method,
        "malloc_keeps_freed_memory": keep_freed,
        "provenance": provenance(device),
        "native_kernels": native_status(),  # which hot loops ran as C kernels, or why not
        "reference": {
            name: {"optimizer": f"torch.optim.{REFERENCES[name].__name__}(lr={REFERENCE_LR})", "ms_per_step": summary(values)}
            for name, values in bare.items()
        },
        "evaluation": {"test_examples": len(full_data.test_labels),
                       "validation_examples": len(full_data.validation_labels), "ms_per_evaluation": summary(evals)},
        "optimizers": {},
    }
    for name, opt in bound.items():
        meta = {}
        for seeds in spec.seeds:
            values = tested[name, seeds]
            meta[str(seeds)] = {
                "seeds": seeds,
                "execution": execution_mode(opt, seeds, coordinates=learner.num_parameters(), device=device),
                "ms_per_seed_step": summary(values),
                "ms_per_step_all_seeds": summary([v * seeds for v in values]),
                **{f"ratio_to_{ref.replace('-', '_')}": ratio(values, bare[ref]) for ref in REFERENCES},
            }
        entry: dict[str, Any] = {
            "learned": name in learned,
            "meta_test": meta,
            "meta_test_memory": {"steps": spec.memory_steps, **memory_test[name]},
            "meta_training": None,
            "meta_training_memory": None,
        }
        if name in learned:
            entry["meta_parameters"] = "fresh (untrained): the cost does not depend on their values"
            entry["meta_training"] = {"unroll": spec.meta_unroll, "learner_steps": spec.meta_steps,
                                      "ms_per_learner_step": summary(trained[name])}
            entry["meta_training_memory"] = {"unroll": spec.memory_unroll, "learner_steps": 2 * spec.memory_unroll,
                                             **memory_train[name]}
        report["optimizers"][name] = entry
    return report
