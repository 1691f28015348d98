"""``l2lbench meta-train``: meta-train one learned optimiser into the checkpoint cache.

    l2lbench meta-train lstm --tasks mnist                       # the paper's defaults
    l2lbench meta-train mtl2l --tasks fashion-mnist,kmnist --trials 30
    l2lbench meta-train lstm --suite domain-shift                # the suite's config
    l2lbench meta-train lstm --suite same-domain --tasks mnist   # one task of a per-task suite
    l2lbench meta-train lstm --tasks mnist --estimator pes --sigma 0.01 --particles 8

The checkpoint lands where ``l2lbench run`` looks for it (``<results>/checkpoints/``), so a
later run of a suite with the same configuration reuses it; ``--out`` copies it elsewhere.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from l2lbench.cli.argtypes import csv_list, positive_int
from l2lbench.errors import UsageError


def _setting(value: str) -> tuple[str, Any]:
    key, sep, text = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"invalid setting {value!r} (expected KEY=VALUE, e.g. smoothing=0)")
    try:
        parsed = tomllib.loads(f"v = {text}")["v"]
    except RecursionError:
        raise argparse.ArgumentTypeError(f"invalid setting {key.strip()!r}: nested too deeply") from None
    except tomllib.TOMLDecodeError:
        parsed = text  # a bare word such as head=linear
    return key.strip(), parsed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("optimizer", help="a learned optimiser: lstm, mtl2l, mlp-lopt or a learned plug-in")
    parser.add_argument("--suite", help="start from this suite's [meta_training] config and hyperparameters")
    parser.add_argument("--tasks", type=csv_list, metavar="A,B",
                        help="training datasets, alternated trial by trial; with --suite, which of the suite's tasks "
                             "to meta-train for (names or globs, default all: one meta-training per task where the "
                             "suite meta-trains on each task's own data)")
    parser.add_argument("--steps", type=positive_int, metavar="S", help="learner steps per trial (default 100)")
    parser.add_argument("--trials", type=positive_int, metavar="Q", help="learners to train (default 20)")
    parser.add_argument("--unroll", type=positive_int, metavar="XI", help="steps per truncated unroll (default 5)")
    parser.add_argument("--lr", type=float, help="meta-optimiser (Adam) learning rate (default 0.001)")
    parser.add_argument("--batch-size", type=positive_int, help="learner minibatch size (default 128)")
    parser.add_argument("--param-noise", action="store_true", help="add the decaying parameter noise of B.5.3")
    parser.add_argument("--seed", type=int, help="meta-training seed (default 0)")
    parser.add_argument("--meta-loss", metavar="{paper,authors}",  # checked by MetaTrainingSpec (no torch import here)
                        help="paper: the next batch's loss after each update (Algorithm 1, the default); "
                             "authors: the updated learner's loss on the same batch (their code)")
    parser.add_argument("--estimator", metavar="{tbptt,es,pes}",  # checked by MetaTrainingSpec, as --meta-loss
                        help="how each truncation's meta-gradient is estimated: tbptt, truncated back-propagation "
                             "(the papers', the default); es, antithetic evolution strategies; pes, persistent ES")
    parser.add_argument("--sigma", type=float, help="es/pes: std of the meta-parameter perturbations (default 0.01)")
    parser.add_argument("--particles", type=positive_int, metavar="N",
                        help="es/pes: antithetic pairs of perturbed learners (default 8)")
    parser.add_argument("--set", dest="settings", action="append", default=[], type=_setting, metavar="KEY=VALUE",
                        help="an optimiser hyperparameter as a TOML value, e.g. --set smoothing=0 (repeatable)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--out", metavar="PATH", help="also write the checkpoint to PATH")
    parser.add_argument("--force", action="store_true", help="meta-train again even when a cached checkpoint exists")


def run(args: argparse.Namespace, *, registry: Any, data_dir: Path) -> int:
    import dataclasses

    from l2lbench.execute.device import resolve_device
    from l2lbench.fastpath.memory import keep_freed_memory
    from l2lbench.execute.metatrained import ensure_meta_trained
    from l2lbench.store.checkpoint import load_checkpoint, save_checkpoint

    keep_freed_memory()  # this process trains: reuse freed memory (see keep_freed_memory)
    device = resolve_device(args.device)
    settings = {"steps": args.steps, "trials": args.trials, "unroll": args.unroll, "lr": args.lr,
                "batch_size": args.batch_size, "seed": args.seed, "param_noise": True if args.param_noise else None,
                "meta_loss": args.meta_loss, "estimator": args.estimator, "sigma": args.sigma,
                "particles": args.particles}
    settings = {k: v for k, v in settings.items() if v is not None}
    optimizers = _from_suite(args, registry, settings, device) if args.suite else [_from_flags(args, registry, settings, device)]
    for optimizer in optimizers:
        if not optimizer.learned:
            learned = [e.name for e in registry.entries() if _learned_entry(registry, e.name)]
            raise UsageError(f"optimizer {optimizer.entry.name!r} is not learned; expected one of: {', '.join(learned)}")
    if args.out and len(optimizers) > 1:
        raise UsageError(f"--out {args.out!r} takes one checkpoint, but this selection meta-trains {len(optimizers)} "
                         "(expected --tasks naming one task of the suite)")
    from l2lbench.plan.runs import check_batches

    tasks = {t for o in optimizers for t in o.meta_training.tasks}
    loaded = {dataset: dataset.load(data_dir) for dataset in {t.dataset for t in tasks}}  # fail fast on missing data
    check_batches([(t, o) for o in optimizers for t in o.meta_training.tasks], loaded)
    results = Path(args.results)
    for optimizer in optimizers:
        ready = ensure_meta_trained(optimizer, results_dir=results, data_dir=data_dir, device=device, log=print,
                                    force=args.force)
        checkpoint = load_checkpoint(ready.checkpoint)
        trial_loss = checkpoint.history.get("trial_loss", [])
        if trial_loss:
            print(f"meta-loss (mean learner loss per trial): first {trial_loss[0]:.4f}, last {trial_loss[-1]:.4f}, "
                  f"over {len(trial_loss)} trials in {checkpoint.wall_time_s:.1f} s")
        print(f"checkpoint: {ready.checkpoint}")
        if args.out:
            print(f"copied to: {save_checkpoint(dataclasses.replace(checkpoint, path=None), args.out)}")
    return 0


def _from_flags(args: argparse.Namespace, registry: Any, settings: dict[str, Any], device: Any) -> Any:
    """The optimiser meta-trained on the ``--tasks`` datasets with the flags' settings."""
    import dataclasses

    from l2lbench.spec.optimizer import OptimizerSpec
    from l2lbench.spec.metatraining import MetaTrainingSpec

    if not args.tasks:
        raise UsageError("meta-train needs training tasks (expected --tasks mnist[,kmnist] or --suite NAME)")
    spec = MetaTrainingSpec.from_config({"tasks": args.tasks, **settings})
    from l2lbench.plan.runs import numerics

    optimizer = registry.resolve(OptimizerSpec(args.optimizer, tuple(sorted(dict(args.settings).items()))))
    optimizer = dataclasses.replace(optimizer, meta_training=spec)
    return dataclasses.replace(optimizer, numerics=numerics(optimizer, device))


def _from_suite(args: argparse.Namespace, registry: Any, settings: dict[str, Any], device: Any) -> list[Any]:
    """The optimisers a ``run`` of the suite would meta-train (so that it then finds them
    cached): the suite's own resolution, for the tasks ``--tasks`` selects (all if none;
    one meta-training each where the suite meta-trains per task)."""
    import dataclasses

    from l2lbench.plan.runs import suite_runs
    from l2lbench.spec.suite import load_suite

    suite = load_suite(args.suite).with_overrides(meta=settings or None)
    matches = [o for o in suite.optimizers if args.optimizer in (o.name, o.entry)]
    if not matches:
        raise UsageError(
            f"suite {suite.name!r} has no optimizer {args.optimizer!r}; expected one of: "
            f"{', '.join(o.name for o in suite.optimizers)}"
        )
    spec = matches[0]
    if args.settings:
        hparams = {**dict(spec.hparams), **dict(args.settings)}
        spec = dataclasses.replace(spec, hparams=tuple(sorted(hparams.items())))
    suite = dataclasses.replace(suite, optimizers=(spec,))
    distinct: dict[str, Any] = {}
    for _, optimizer in suite_runs(suite, registry, task_patterns=args.tasks, device=device):
        if optimizer.meta_training is None:
            raise UsageError(f"suite {suite.name!r} has no [meta_training] table for {spec.name!r} "
                             "(expected one, or meta-train with --tasks DATASETS and no --suite)")
        distinct.setdefault(optimizer.hash, optimizer)
    return list(distinct.values())


def _learned_entry(registry: Any, name: str) -> bool:
    try:
        return registry.resolve(name).learned
    except Exception:
        return False
