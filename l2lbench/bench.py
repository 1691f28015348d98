"""What an optimiser costs on this machine, measured next to a bare hand-written torch loop.

``l2lbench bench`` (see :mod:`l2lbench.cli.bench`) runs, in one process and
interleaved repeat by repeat so that a noisy machine disturbs every figure alike:

* **the reference**: a bare PyTorch loop, ``torch.optim.SGD`` and ``torch.optim.Adam``
  (lr 0.01) on the task's learner, with the runner's seed-0 initialisation and batches;
* **meta-test**: :func:`l2lbench.metatest.run_seeds`, the runner's own code path, for 1
  seed and for S seeds batched; milliseconds per learner step and per seed-step. The
  timed task evaluates only at its first and last step and on one batch of test and of
  validation examples, so the figure is the training step; one full evaluation (test and
  validation splits) is timed on its own;
* **meta-training** (learned optimisers): :func:`l2lbench.learned.metatrain.meta_train` with
  one learner, timed between the first and the last meta-update of the trial (so the
  set-up before the first unroll is excluded); milliseconds per learner step;
* **memory**: resident-set growth over a meta-test run of ``memory_steps`` steps (the
  task's own evaluation cadence), and the peak of meta-training with unroll 20.

Every time is a minimum and a median over ``repeats``. A ratio to the bare loop is given
as the ratio of the minima and the ratio of the medians (on a busy machine the minimum is
the least disturbed estimate of a cost), with the per-repeat ratios for reference. Learned optimisers run with freshly
initialised meta-parameters: their cost does not depend on the values.

Memory comes from ``/proc/self/status`` (Linux): ``VmRSS`` is the resident set now and
``VmHWM`` its high-water mark, which writing ``5`` to ``/proc/self/clear_refs`` resets to
the current RSS, so each measurement sees only its own peak. Where that reset is refused,
the peak is ``ru_maxrss`` of ``getrusage`` (the lifetime peak of the process: it can only
overstate a growth) and the report says so. ``tracemalloc`` would miss torch's tensors,
which are not allocated through Python.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .hashing import derive_seed
from .learned.spec import MetaTrainingSpec
from .learned.metatrain import meta_train
from .learner import FunctionalLearner
from .native.build import start_recording as start_native_recording
from .native.build import status as native_status
from .optim.learned import bind_fresh, is_learned
from .provenance import provenance
from .task import TaskSpec
from .metatest import (
    PreparedData,
    batch_schedule,
    evaluate,
    execution_mode,
    keep_freed_memory,
    run_seeds,
)

SCHEMA = "l2lbench-bench/1"
DEFAULT_OPTIMIZERS = ("sgd", "adam", "lstm", "mtl2l")
REFERENCES = {"torch-sgd": torch.optim.SGD, "torch-adam": torch.optim.Adam}
REFERENCE_LR = 0.01  # the paper's baselines
_MB = 1024 * 1024


@dataclass(frozen=True)
class BenchSpec:
    """What to measure.

    Attributes:
        task: the task whose data and learner are used; its ``steps`` are replaced by
            ``steps`` for the timed runs and by ``memory_steps`` for the memory run.
        steps: learner steps per timed meta-test run (and of each bare-loop run).
        seeds: seed counts to time at meta-test (1 = unbatched; S > 1 = the runner's
            batched path for the optimiser, per seed-step).
        repeats: timed repetitions of everything (min and median are reported).
        meta_steps: learner steps of the meta-training trial timed per repeat.
        meta_unroll: the unroll of the timed meta-training (the paper's 5).
        memory_steps: steps of the meta-test memory run (the issue's 1000).
        memory_unroll: the unroll of the meta-training memory run (the authors' 20).
        fresh_process: run the meta-training memory measurement in a fresh Python process
            (spawned), so that its peak is what ``l2lbench meta-train`` peaks at: imports,
            data and graph. Otherwise (or when the plug-in cannot be sent to another
            process) it runs in this one, where only the growth is meaningful.
    """

    task: TaskSpec
    steps: int = 200
    seeds: tuple[int, ...] = (1, 8)
    repeats: int = 5
    meta_steps: int = 100
    meta_unroll: int = 5
    memory_steps: int = 1000
    memory_unroll: int = 20
    fresh_process: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "repeats", "meta_steps", "meta_unroll", "memory_steps", "memory_unroll"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"invalid {name}: {value!r} (expected a positive integer)")
        if not self.seeds or any(not isinstance(s, int) or isinstance(s, bool) or s <= 0 for s in self.seeds):
            raise ValueError(f"invalid seeds: {self.seeds!r} (expected positive seed counts, e.g. 1,8)")


# --------------------------------------------------------------------------- memory


class MemoryProbe:
    """Resident memory of this process (see the module docstring for the method)."""

    def __init__(self) -> None:
        self.proc = Path("/proc/self/status").is_file()
        self.resettable = self.proc and self._reset()

    @property
    def method(self) -> str:
        if self.resettable:
            return "VmRSS and VmHWM of /proc/self/status; VmHWM reset per measurement via /proc/self/clear_refs"
        if self.proc:
            return "VmRSS of /proc/self/status; peak = getrusage ru_maxrss (process lifetime peak, not reset)"
        return "getrusage ru_maxrss only (process lifetime peak, not reset); no resident-set growth"

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _status(self, key: str) -> float | None:
        if not self.proc:
            return None
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / _MB
        return None

    def rss_mb(self) -> float | None:
        return self._status("VmRSS")

    def peak_mb(self) -> float:
        if self.resettable:
            value = self._status("VmHWM")
            if value is not None:
                return value
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss / _MB if sys.platform == "darwin" else maxrss * 1024 / _MB

    def measure(self, fn: Callable[[], Any]) -> dict[str, float | None]:
        """Run ``fn``; RSS before and after it, and the peak while it ran (MB)."""
        gc.collect()
        if self.resettable:
            self._reset()
        before = self.rss_mb()
        fn()
        peak = self.peak_mb()
        gc.collect()
        after = self.rss_mb()
        return {
            "rss_before_mb": _round(before),
            "rss_after_mb": _round(after),
            "rss_growth_mb": _round(after - before) if before is not None and after is not None else None,
            "peak_rss_mb": _round(peak),
            "peak_growth_mb": _round(peak - before) if before is not None else None,
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------- pieces


def summary(values: list[float]) -> dict[str, Any]:
    """``{"min", "median", "values"}`` of a list of measurements."""
    return {"min": _round(min(values), 4), "median": _round(statistics.median(values), 4),
            "values": [_round(v, 4) for v in values]}


def ratio(values: list[float], reference: list[float]) -> dict[str, Any]:
    """``values`` over ``reference`` (paired by repeat): ratio of minima, of medians, per repeat."""
    return {
        "of_min": _round(min(values) / min(reference), 4),
        "of_median": _round(statistics.median(values) / statistics.median(reference), 4),
        "per_repeat": [_round(v / r, 4) for v, r in zip(values, reference)],
    }


def timing_task(task: TaskSpec, steps: int) -> TaskSpec:
    """``task`` for ``steps`` steps, evaluated only at its ends on one batch of test examples."""
    return dataclasses.replace(task, steps=steps, eval_every=steps, eval_examples=task.batch_size)


def bare_loop(
    reference: str, task: TaskSpec, learner: FunctionalLearner, data: PreparedData, device: torch.device
) -> float:
    """Seconds for the hand-written loop a user would write: ``torch.optim`` on an
    ``nn.Module``, the runner's seed-0 initialisation and batches, losses kept on the device."""
    params = learner.init(torch.Generator().manual_seed(derive_seed(task.hash, 0, "init")), device)
    model = task.learner.build(task.dataset.input_shape, task.dataset.num_classes).to_empty(device=device)
    model.load_state_dict(params)
    start = time.perf_counter()
    optimizer = REFERENCES[reference](model.parameters(), lr=REFERENCE_LR)
    schedule = batch_schedule(len(data.train_labels), task.steps, task.batch_size, derive_seed(task.hash, 0, "data")).to(device)
    losses = torch.empty(task.steps, device=device)
    for t in range(task.steps):
        inputs, labels = data.minibatch(schedule[t])  # the runner's own gather: same data cost
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[t] = loss.detach()
    float(losses[-1])  # one sync at the end (a no-op on the CPU)
    return time.perf_counter() - start


def meta_test(task: TaskSpec, optimizer: Any, learner: FunctionalLearner, data: PreparedData, seeds: int, device: torch.device) -> float:
    """Seconds for :func:`~l2lbench.metatest.run_seeds` over seeds ``0..seeds-1``."""
    start = time.perf_counter()
    run_seeds(task, optimizer, learner, data, list(range(seeds)), device=device, vectorize=True)
    return time.perf_counter() - start


def meta_training_spec(task: TaskSpec, steps: int, unroll: int) -> MetaTrainingSpec:
    return MetaTrainingSpec(tasks=(dataclasses.replace(task, steps=steps),), trials=1, unroll=min(unroll, steps))


def meta_training_step(optimizer: Any, task: TaskSpec, steps: int, unroll: int, data_dir: Path, device: torch.device) -> float:
    """Seconds per learner step of :func:`~l2lbench.learned.metatrain.meta_train` with one
    learner, between the first and the last meta-update (set-up excluded)."""
    marks: list[tuple[int, float]] = []
    spec = meta_training_spec(task, steps, unroll)
    meta_train(optimizer, spec, data_dir=data_dir, device=device, progress=False,
               on_unroll=lambda trial, step, loss: marks.append((step, time.perf_counter())))
    if len(marks) < 2:
        raise ValueError(f"meta-training timing needs two unrolls: meta_steps ({steps}) must exceed meta_unroll ({unroll})")
    (first_step, first), (last_step, last) = marks[0], marks[-1]
    return (last - first) / (last_step - first_step)


def meta_training_memory(
    optimizer: Any,
    spec: MetaTrainingSpec,
    *,
    data_dir: Path,
    device: torch.device,
    probe: MemoryProbe,
    fresh_process: bool,
    keep_freed: bool = False,
) -> dict[str, Any]:
    """Resident memory of :func:`~l2lbench.learned.metatrain.meta_train` with ``spec``, in a
    fresh process when asked and possible (``process`` says where it was measured; with
    ``keep_freed`` that process first calls :func:`~l2lbench.metatest.keep_freed_memory`,
    as this one did)."""
    note = None
    if fresh_process:
        try:
            return {"process": "fresh", **_in_fresh_process(optimizer, spec, data_dir, device, keep_freed)}
        except Exception as exc:  # e.g. a plug-in loaded from a file cannot be pickled
            note = f"a fresh process failed ({type(exc).__name__}: {exc}); measured in this process"
    figures = probe.measure(lambda: meta_train(optimizer, spec, data_dir=data_dir, device=device, progress=False))
    return {"process": "this", **figures, **({"note": note} if note else {})}


def _in_fresh_process(optimizer: Any, spec: MetaTrainingSpec, data_dir: Path, device: torch.device, keep_freed: bool) -> dict[str, Any]:
    import multiprocessing
    import queue

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(
        target=_fresh_meta_training,
        args=(optimizer, spec, data_dir, str(device), torch.get_num_threads(), keep_freed, results),
        daemon=True,
    )
    process.start()
    try:
        while True:
            try:
                result = results.get(timeout=1.0)
                break
            except queue.Empty:
                if not process.is_alive() and results.empty():
                    raise RuntimeError(f"the measuring process exited with code {process.exitcode}") from None
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def _fresh_meta_training(
    optimizer: Any, spec: MetaTrainingSpec, data_dir: Path, device: str, threads: int, keep_freed: bool, results: Any
) -> None:
    """In a spawned process: meta-train, report RSS after the imports and the peak."""
    try:
        torch.set_num_threads(threads)
        if keep_freed:
            keep_freed_memory()
        probe = MemoryProbe()
        before = probe.rss_mb()
        meta_train(optimizer, spec, data_dir=data_dir, device=torch.device(device), progress=False)
        peak = probe.peak_mb()
        results.put({
            "rss_before_mb": _round(before),
            "peak_rss_mb": _round(peak),
            "peak_growth_mb": _round(peak - before) if before is not None else None,
        })
    except BaseException as exc:  # reported to the parent, which falls back
        results.put({"error": f"{type(exc).__name__}: {exc}"})


# --------------------------------------------------------------------------- the run


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

    ``keep_freed`` says that this process called :func:`~l2lbench.metatest.keep_freed_memory`
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


# --------------------------------------------------------------------------- text


def format_text(report: dict[str, Any]) -> str:
    """The report as a few aligned tables (min / median)."""
    from tabulate import tabulate

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
