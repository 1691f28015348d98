"""``l2lbench run``: every (task, optimiser, seed) of a suite not yet stored.

Learned optimisers are meta-trained first (once, cached), then every job runs, in
parallel on worker processes or a Dask cluster when asked; each finished job is stored at
once, so an interrupted run resumes where it stopped. ``--run-timeout`` stops any run that
takes longer and records it as failed (see :func:`l2lbench.execute.timeouts.time_limit` and
:mod:`l2lbench.execute.parallel` for how).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

from l2lbench.cli.argtypes import csv_list, positive_int
from l2lbench.errors import RunError, Stopped, UsageError

WORKERS_ENV = "L2LBENCH_WORKERS"


def _workers(value: str) -> int:
    from l2lbench.execute.parallel import available_cores

    return available_cores() if value == "auto" else positive_int(value)


MAX_RUN_TIMEOUT_S = 7 * 24 * 3600  # a week: beyond it a "limit" is a typo, and timers overflow


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_RUN_TIMEOUT_S):
        raise argparse.ArgumentTypeError(
            f"invalid value {value!r} (expected a positive number of seconds, at most {MAX_RUN_TIMEOUT_S})"
        )
    return seconds


def _gibibytes(value: str) -> int:
    try:
        gib = float(value)
    except ValueError:
        gib = math.nan
    if not (math.isfinite(gib) and 0.25 <= gib <= 2 ** 20):
        raise argparse.ArgumentTypeError(f"invalid value {value!r} (expected GiB between 0.25 and 1048576, e.g. 4)")
    return int(gib * 2 ** 30)


def _assignment(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"invalid checkpoint {value!r} (expected NAME=PATH, e.g. lstm=ckpt.pt)")
    return name.strip(), path.strip()


def add_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--suite", help="a built-in suite name or a .toml file")
    run.add_argument("--task", type=csv_list, metavar="NAME",
                     help="instead of --suite: these tasks (names from `l2lbench list tasks`), with the optimisers, "
                          "seeds and meta-training of the first built-in suite that lists them")
    run.add_argument("--tasks", type=csv_list, metavar="A,B", help="only these tasks (names, dataset names or globs)")
    run.add_argument("--optimizers", type=csv_list, metavar="X,Y", help="only these optimisers (any registered name)")
    run.add_argument("--seeds", type=positive_int, metavar="N", help="seeds 0..N-1 (default: the suite's)")
    run.add_argument("--steps", type=positive_int, metavar="N", help="meta-test steps of every task (default: the suite's)")
    run.add_argument("--meta-trials", type=positive_int, metavar="Q", help="meta-training trials (default: the suite's)")
    run.add_argument("--meta-steps", type=positive_int, metavar="S", help="meta-training steps per trial")
    run.add_argument("--meta-unroll", type=positive_int, metavar="XI", help="meta-training unroll length")
    run.add_argument("--meta-seeds", type=positive_int, metavar="K",
                     help="meta-train every learned optimiser K times (meta-training seeds); every seed runs under "
                          "each copy (default: the suite's, else 1)")
    run.add_argument("--ruleset", choices=("fixed", "tuned"),
                     help="fixed: the suite's hyperparameters; tuned: tune every optimiser with a search space on "
                          "validation data first (default: the suite's)")
    run.add_argument("--tuning-trials", type=positive_int, metavar="N",
                     help="candidates per optimiser and task when tuned (default: the suite's, else 8)")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    run.add_argument("--no-batch", action="store_true", help="run seeds one by one instead of batched with vmap")
    run.add_argument("--workers", type=_workers, default=None, metavar="N|auto",
                     help=f"worker processes (default: ${WORKERS_ENV}, else auto = one per core)")
    run.add_argument("--backend", default="local", help="local (processes on this machine) or dask (a cluster)")
    run.add_argument("--max-memory", type=_gibibytes, metavar="GiB",
                     help="memory each local worker process may take; past it the run that allocates fails "
                          "(default: 90%% of this machine's memory shared between the workers)")
    run.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address for --backend dask")
    run.add_argument("--run-timeout", type=_seconds, metavar="SECONDS",
                     help="stop any run that takes longer and record it as failed (default: no limit)")
    run.add_argument("--rerun", action="store_true",
                     help="recompute the runs (and meta-trainings) the selection covers, replacing stored ones "
                          "once the new ones finish")
    run.add_argument("--no-check", action="store_true",
                     help="skip the conformance checks (interface, state shapes, out of place) that plug-ins must "
                          "pass before they run")
    run.add_argument("--force", action="store_true",
                     help="run jobs even where their estimated memory or compute does not fit")
    run.add_argument("--verbose", "-v", action="store_true", help="print one line per finished job")
    run.add_argument("--checkpoint", action="append", default=[], type=_assignment, metavar="NAME=PATH",
                     help="meta-test learned optimiser NAME with the meta-parameters in PATH (repeatable)")


def _default_workers() -> int:
    from l2lbench.execute.parallel import available_cores

    value = os.environ.get(WORKERS_ENV)
    if value is None:
        return available_cores()
    try:
        return _workers(value)
    except argparse.ArgumentTypeError:
        raise UsageError(f"invalid ${WORKERS_ENV}={value!r} (expected a positive integer or auto)") from None


def _sized_executor(args: argparse.Namespace, pairs: list, seeds: int, workers: int, say: Callable[[str], None]) -> Any:
    """Where the jobs run, once every job (and meta-training) is known to fit: at most as
    many workers as memory holds, each capped at --max-memory. A plug-in's jobs run in a
    worker process even with --workers 1, where its crash, hang or memory blow-up fails
    its own runs instead of the command."""
    from l2lbench.plugin.registry import BUILT_IN
    from l2lbench.execute.parallel import Executor, available_cores, default_max_memory, machine_memory
    from l2lbench.plan.sizing import check_fits, job_size, workers_that_fit

    planned = [(t, seeds, o.meta_training is not None or o.checkpoint is not None) for t, o in pairs]
    planned += [(t, 1, True) for _, o in pairs if o.meta_training is not None for t in o.meta_training.tasks]
    sizes = [(task, n, job_size(task, n, learned=learned)) for task, n, learned in planned]
    local = args.backend != "dask"
    if local and not args.max_memory:
        largest = max(size.memory for _, _, size in sizes)
        fitting = workers_that_fit(workers, largest, machine_memory(), available_cores())
        if fitting < workers:
            say(f"note: {workers} workers do not fit this machine ({available_cores()} cores, memory for jobs of up "
                f"to {largest / 2**30:.1f} GiB each); using {fitting}")
            workers = fitting
    budget = (args.max_memory or default_max_memory(workers)) if local else None
    if not args.force:
        check_fits(sizes, budget=budget)
    return Executor(workers=workers, backend=args.backend, scheduler=args.scheduler,
                    isolate=any(o.entry.kind != BUILT_IN for _, o in pairs), max_memory=budget)


def run(args: argparse.Namespace, *, registry: Any, data_dir: Path, say: Callable[[str], None] = print) -> int:
    try:
        return _run(args, registry=registry, data_dir=data_dir, say=say)
    except OSError as exc:  # e.g. a full disk or a folder that vanished, outside the store
        where = f": {exc.filename}" if exc.filename else ""
        raise RunError(f"{exc.strerror or exc}{where} (finished runs are stored; run the same command to resume)") from exc


def _run(args: argparse.Namespace, *, registry: Any, data_dir: Path, say: Callable[[str], None]) -> int:
    import dataclasses

    from tqdm import tqdm

    from l2lbench.execute.metatrained import use_checkpoint_file
    from l2lbench.plugin.registry import PLUG_IN
    from l2lbench.execute.parallel import Executor
    from l2lbench.execute.device import resolve_device
    from l2lbench.execute.metatrained import with_meta_training
    from l2lbench.execute.runner import run_jobs
    from l2lbench.plan.runs import check_batches, plan, suite_runs
    from l2lbench.store.runs import ResultsStore
    from l2lbench.spec.suite import load_suite, task_suite
    from l2lbench.fastpath.memory import keep_freed_memory

    keep_freed_memory()  # this process may train (--workers 1): reuse freed memory
    device = resolve_device(args.device)
    meta = {k: v for k, v in (("trials", args.meta_trials), ("steps", args.meta_steps), ("unroll", args.meta_unroll)) if v}
    from l2lbench.spec.suite import MAX_META_SEEDS

    if args.meta_seeds and args.meta_seeds > MAX_META_SEEDS:
        raise UsageError(f"invalid --meta-seeds {args.meta_seeds} (expected at most {MAX_META_SEEDS})")
    if (args.suite is None) == (args.task is None):
        raise UsageError("run needs --suite NAME or --task NAME (one of them; `l2lbench list suites`, `l2lbench list tasks`)")
    base = load_suite(args.suite) if args.suite else task_suite(args.task)
    suite = base.with_overrides(steps=args.steps, meta=meta or None, meta_seeds=args.meta_seeds,
                                ruleset=args.ruleset, tuning_trials=args.tuning_trials)
    workers = args.workers or _default_workers()
    Executor(workers=workers, backend=args.backend, scheduler=args.scheduler)  # bad options: exit 2 now
    names = args.optimizers
    if names is None and args.plugin:
        # Plug-ins given on the command line run beside the suite's own optimisers.
        builtin = {o.entry for o in suite.optimizers}
        names = [o.name for o in suite.optimizers] + [
            e.name for e in registry.entries() if e.kind == PLUG_IN and e.name not in builtin
        ]
    pairs = suite_runs(suite, registry, task_patterns=args.tasks, optimizer_names=names, device=device)
    for name, path in args.checkpoint:
        hits = [i for i, (_, o) in enumerate(pairs) if o.name == name]
        if not hits:
            known = ", ".join(dict.fromkeys(o.name for _, o in pairs))
            raise UsageError(f"--checkpoint {name}={path}: no optimizer {name!r} in this run; expected one of: {known}")
        given = use_checkpoint_file(pairs[hits[0]][1], path)
        for i in hits:
            pairs[i] = (pairs[i][0], dataclasses.replace(given, spec=pairs[i][1].spec))
    seeds = args.seeds or suite.seeds
    executor = _sized_executor(args, pairs, seeds, workers, say)
    if not args.no_check:
        _check_plugins(pairs, tuple(args.plugin), executor, limit=min(60.0, args.run_timeout or 60.0))
    # Fail fast, before any compute, on data that is missing or corrupt (meta-training too).
    datasets = {t.dataset for t, _ in pairs}
    datasets |= {t.dataset for _, o in pairs if o.meta_training is not None for t in o.meta_training.tasks}
    loaded = {dataset: dataset.load(data_dir) for dataset in sorted(datasets, key=lambda d: d.name)}
    check_batches(pairs, loaded)
    store = ResultsStore(args.results)
    plugins = tuple(args.plugin)
    stored = [0]  # finished runs stored so far: what a stop signal reports

    def execute(jobs: list, total: int) -> Any:
        with tqdm(total=total, unit="run", disable=None, dynamic_ncols=True) as bar:
            def done(job, records):
                bar.update(len(records))
                stored[0] += sum(r.status != "failed" for r in records)
                if args.verbose:
                    states = ", ".join(f"seed {r.seed} {r.status}" for r in records)
                    bar.write(f"{job.label}: {states} ({sum(r.wall_time_s for r in records):.1f}s)")

            try:
                return run_jobs(jobs, store, data_dir=data_dir, device=device, vectorize=not args.no_batch,
                                executor=executor, plugins=plugins, on_job_done=done, run_timeout=args.run_timeout,
                                replace=args.rerun)
            except Stopped as exc:
                exc.stored = stored[0]
                raise

    failed: list[str] = []
    if suite.ruleset == "tuned":
        pairs, tuning_failed = _tune(suite, pairs, registry, store, execute, args, say)
        failed += tuning_failed
    jobs, skipped = plan(pairs, seeds, store, rerun=args.rerun)
    total = sum(len(j.seeds) for j in jobs)
    tasks = {t for t, _ in pairs}
    optimizers = {o.name for _, o in pairs}
    copies = (f" (learned ones meta-trained under {suite.meta_seeds} seeds each)"
              if suite.meta_seeds > 1 and any(o.meta_training is not None for _, o in pairs) else "")
    say(
        f"suite {suite.name}: {len(tasks)} tasks x {len(optimizers)} optimizers{copies} x {seeds} seeds; "
        + (f"{total} to recompute (--rerun) " if args.rerun else f"{skipped} runs already stored (skipped), {total} to run ")
        + executor.describe()
        + (f", at most {args.run_timeout:g}s per run" if args.run_timeout else "")
    )
    jobs = with_meta_training(jobs, results_dir=Path(args.results), data_dir=data_dir, device=device,
                              executor=executor, plugins=plugins, log=say, retrain=args.rerun)
    summary = execute(jobs, total)
    say(
        f"done: {summary.ok} ok, {summary.diverged} diverged, {len(summary.failed)} failed, "
        f"{skipped} skipped; results in {store.path}"
    )
    failed += summary.failed
    for line in failed:
        print(f"l2lbench: failed: {line}", file=sys.stderr)
    return 1 if failed else 0


def _plugin_problems(specs: tuple, plugins: tuple[str, ...]) -> dict[Any, list[str]]:
    # In one worker process: rebuild each plug-in there and run the fast checks on it. One
    # that cannot even be built here is left to its runs, which will say why.
    from l2lbench.execute.parallel import worker_registry
    from l2lbench.testing.conformance import fast_problems

    found = {}
    for spec in specs:
        try:
            optimizer = worker_registry(plugins).resolve(spec).build()
        except BaseException:  # noqa: BLE001 - even its own exit: a worker ignores stop signals
            continue
        found[spec] = fast_problems(optimizer)
    return found


def _check_plugins(pairs: list, plugins: tuple[str, ...], executor: Any, *, limit: float) -> None:
    """Refuse a plug-in that fails a fast conformance check (exit 2, before anything runs):
    one that changes its inputs in place, say, would otherwise store plausible numbers.
    The checks run in a worker process, as the plug-ins' runs do, so one that crashes or
    hangs there (past ``limit`` seconds per plug-in) costs only its own runs later, not
    this command."""
    import dataclasses

    from l2lbench.errors import PluginError
    from l2lbench.plugin.registry import BUILT_IN

    specs = {o.spec: o for _, o in pairs if o.entry.kind != BUILT_IN}
    if not specs:
        return
    checker = dataclasses.replace(executor, workers=1, isolate=True) if executor.backend == "local" else executor
    batch = tuple(specs)
    for _, found in checker.map(_plugin_problems, [batch], plugins, time_limit=lambda item: limit * len(item)):
        for spec, problems in (found.items() if isinstance(found, dict) else ()):
            if problems:
                raise PluginError(f"optimizer {spec.name!r} ({specs[spec].entry.source}) fails the conformance check "
                                  f"{problems[0]} (fix it, or run with --no-check)")


def _tune(suite: Any, pairs: list, registry: Any, store: Any, execute: Callable, args: argparse.Namespace,
          say: Callable[[str], None]) -> tuple[list, list[str]]:
    """The tuning stage of a ``tuned`` suite: run every candidate on the tuning seeds, then
    return the pairs with each tuned optimiser replaced by its winner, and what failed."""
    from l2lbench.plan.runs import plan
    from l2lbench.plan.tuning import score, tuning_plan

    plans = tuning_plan(pairs, suite.tuning, registry)
    trial_pairs = [(p.task, candidate) for p in plans for _, candidate in p.trials]
    jobs, skipped = plan(trial_pairs, suite.tuning.seed_indices, store, rerun=args.rerun)
    total = sum(len(j.seeds) for j in jobs)
    say(f"tuning on validation data: {len(plans)} optimizer-task pairs x up to {suite.tuning.trials} candidates x "
        f"{suite.tuning.seeds} tuning seeds; {skipped} runs already stored (skipped), {total} to run")
    summary = execute(jobs, total)
    score(plans, lambda task, optimizer: store.runs(task_hashes=[task], optimizer_hashes=[optimizer]), suite.tuning)
    chosen, failed = {}, [f"tuning: {line}" for line in summary.failed]
    for p in plans:
        if p.best is None:
            failed.append(f"tuning {p.base.name} on {p.task.name}: no candidate finished on every tuning seed; "
                          "it is not run on the final seeds")
            continue
        values, best = p.trials[p.best][0], p.objectives[p.best]
        edge = f"; {', '.join(p.on_edge)} on the edge of its range: widen it" if p.on_edge else ""
        say(f"tuned {p.base.name} on {p.task.name}: {', '.join(f'{k}={v:g}' for k, v in values.items())} "
            f"(validation {suite.tuning.objective} loss {best:.4g}{edge})")
        chosen[(p.task, p.base)] = p.chosen(registry)
    tuned = {(p.task, p.base) for p in plans}
    kept = []
    for pair in pairs:
        if pair in chosen:
            kept.append((pair[0], chosen[pair]))
        elif pair not in tuned:  # not tuned (learned, or no search space): as given
            kept.append(pair)
    return kept, failed
