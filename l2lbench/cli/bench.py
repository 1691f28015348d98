"""``l2lbench bench``: time optimisers on this machine next to a bare torch loop.

    l2lbench bench                                   # sgd, adam, lstm, mtl2l; MNIST if imported
    l2lbench bench --optimizers adam,my-opt --plugin my_opt.py --format json
    l2lbench bench --task synthetic --steps 50 --seeds 1,4 --repeats 3

Everything is measured in one process, interleaved (see :mod:`l2lbench.bench`). Progress
goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from l2lbench.cli.argtypes import csv_list, positive_int
from l2lbench.errors import DataMissingError, UsageError


def _counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        counts = ()
    if not counts or any(c <= 0 for c in counts):
        raise argparse.ArgumentTypeError(f"invalid seed counts {value!r} (expected positive integers, e.g. 1,8)")
    return tuple(dict.fromkeys(counts))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from l2lbench.bench.spec import DEFAULT_OPTIMIZERS

    parser.add_argument("--optimizers", type=csv_list, default=list(DEFAULT_OPTIMIZERS), metavar="A,B",
                        help=f"optimisers to time (default: {','.join(DEFAULT_OPTIMIZERS)})")
    parser.add_argument("--task", metavar="NAME",
                        help="a dataset (mnist, synthetic, ...: the paper's MLP, batch 128) or a task of a built-in "
                             "suite (default: mnist when its files are in the data folder, else synthetic)")
    parser.add_argument("--steps", type=positive_int, default=200, metavar="N", help="learner steps per timed run (default 200)")
    parser.add_argument("--seeds", type=_counts, default=(1, 8), metavar="1,8",
                        help="seed counts to time at meta-test; S > 1 runs batched (default 1,8)")
    parser.add_argument("--repeats", type=positive_int, default=5, metavar="R", help="timed repetitions (default 5)")
    parser.add_argument("--meta-steps", type=positive_int, default=100, metavar="N",
                        help="learner steps of the timed meta-training trial (default 100)")
    parser.add_argument("--meta-unroll", type=positive_int, default=5, metavar="XI",
                        help="unroll of the timed meta-training (default 5, the paper's)")
    parser.add_argument("--memory-steps", type=positive_int, default=1000, metavar="N",
                        help="steps of the meta-test memory run (default 1000)")
    parser.add_argument("--memory-unroll", type=positive_int, default=20, metavar="XI",
                        help="unroll of the meta-training memory run (default 20, the authors')")
    parser.add_argument("--memory-in-process", action="store_true",
                        help="measure meta-training memory in this process instead of a fresh one (faster; then only "
                             "its growth is meaningful)")
    parser.add_argument("--threads", type=positive_int, metavar="N", help="torch threads (default: torch's own choice)")
    parser.add_argument("--format", choices=["text", "json"], default="text", help="report as tables (default) or JSON")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="dataset folder (default: $L2LBENCH_DATA or the user cache folder)")


def resolve_task(name: str | None, data_dir: Path) -> Any:
    """A dataset kind (the paper's MLP on it) or a built-in suite's task; ``None``: MNIST
    when its files are here, else synthetic data."""
    from l2lbench.spec.suite import builtin_suites, load_suite, task_matches
    from l2lbench.spec.task import TaskSpec
    from l2lbench.tasks.datasets import DATASETS

    if name is None:
        task = TaskSpec.from_config({"dataset": "mnist"})
        try:
            task.dataset.load(data_dir, download=False)
            return task
        except DataMissingError:
            return TaskSpec.from_config({"dataset": "synthetic"})
    if name in DATASETS:
        return TaskSpec.from_config({"dataset": name})
    for suite in builtin_suites():
        for task in load_suite(suite).tasks:
            if task.hash == name or task_matches(task, name):
                return task
    raise UsageError(f"unknown task {name!r}; expected a dataset ({', '.join(DATASETS)}) or a task of a built-in suite")


def run(args: argparse.Namespace, *, registry: Any = None) -> int:
    import torch

    import dataclasses

    from l2lbench.bench.format import format_json, format_text
    from l2lbench.bench.run import run_bench
    from l2lbench.bench.spec import BenchSpec
    from l2lbench.execute.parallel import default_max_memory
    from l2lbench.plan.sizing import check_fits, job_size
    from l2lbench.execute.device import resolve_device
    from l2lbench.tasks.datasets import default_data_dir
    from l2lbench.fastpath.memory import keep_freed_memory

    device = resolve_device(args.device)
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    if args.threads:
        torch.set_num_threads(args.threads)
    if registry is None:
        from l2lbench.cli import registry_for

        registry = registry_for(getattr(args, "plugin", []) or [])
    optimizers = {name: registry.resolve(name).build() for name in args.optimizers}
    task = resolve_task(args.task, data_dir)
    learned = any(getattr(o, "learned", False) for o in optimizers.values())
    # Refuse a seed count that cannot fit before timing anything (--seeds 100000).
    timed = dataclasses.replace(task, steps=args.steps)
    check_fits([(timed, n, job_size(timed, n, learned=learned)) for n in args.seeds], budget=default_max_memory(1),
               remedy="fewer --seeds or --steps")
    spec = BenchSpec(task=task, steps=args.steps, seeds=tuple(args.seeds), repeats=args.repeats,
                     meta_steps=args.meta_steps, meta_unroll=args.meta_unroll,
                     memory_steps=args.memory_steps, memory_unroll=args.memory_unroll,
                     fresh_process=not args.memory_in_process)
    if spec.meta_steps <= spec.meta_unroll and any(getattr(o, "learned", False) for o in optimizers.values()):
        raise UsageError(f"--meta-steps {spec.meta_steps} must exceed --meta-unroll {spec.meta_unroll} (two meta-updates are timed between)")
    # As a training process should: otherwise page faults on re-allocated memory cost the
    # LSTM optimisers about a sixth of a step (see keep_freed_memory).
    keep_freed = keep_freed_memory()
    report = run_bench(spec, optimizers, data_dir=data_dir, device=device, keep_freed=keep_freed,
                       log=lambda message: print(f"l2lbench bench: {message}", file=sys.stderr))
    print(format_json(report) if args.format == "json" else format_text(report))
    return 0
