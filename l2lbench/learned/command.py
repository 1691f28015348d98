"""``l2lbench meta-train``: meta-train one learned optimiser into the checkpoint cache.

    l2lbench meta-train lstm --tasks mnist                       # the paper's defaults
    l2lbench meta-train mtl2l --tasks fashion-mnist,kmnist --trials 30
    l2lbench meta-train lstm --suite domain-shift                # the suite's config

The checkpoint lands where ``l2lbench run`` looks for it (``<results>/checkpoints/``), so a
later run of a suite with the same configuration reuses it; ``--out`` copies it elsewhere.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from ..argtypes import csv_list, positive_int
from ..errors import UsageError


def _setting(value: str) -> tuple[str, Any]:
    key, sep, text = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"invalid setting {value!r} (expected KEY=VALUE, e.g. smoothing=0)")
    try:
        parsed = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = text  # a bare word such as head=linear
    return key.strip(), parsed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("optimizer", help="a learned optimiser: lstm, mtl2l or a learned plug-in")
    parser.add_argument("--suite", help="start from this suite's [meta_training] config and hyperparameters")
    parser.add_argument("--tasks", type=csv_list, metavar="A,B", help="training datasets, alternated trial by trial")
    parser.add_argument("--steps", type=positive_int, metavar="S", help="learner steps per trial (default 100)")
    parser.add_argument("--trials", type=positive_int, metavar="Q", help="learners to train (default 20)")
    parser.add_argument("--unroll", type=positive_int, metavar="XI", help="steps per truncated unroll (default 5)")
    parser.add_argument("--lr", type=float, help="meta-optimiser (Adam) learning rate (default 0.001)")
    parser.add_argument("--batch-size", type=positive_int, help="learner minibatch size (default 128)")
    parser.add_argument("--param-noise", action="store_true", help="add the decaying parameter noise of B.5.3")
    parser.add_argument("--seed", type=int, help="meta-training seed (default 0)")
    parser.add_argument("--set", dest="settings", action="append", default=[], type=_setting, metavar="KEY=VALUE",
                        help="an optimiser hyperparameter as a TOML value, e.g. --set smoothing=0 (repeatable)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--out", metavar="PATH", help="also write the checkpoint to PATH")
    parser.add_argument("--force", action="store_true", help="meta-train again even when a cached checkpoint exists")


def run(args: argparse.Namespace, *, registry: Any, data_dir: Path) -> int:
    import dataclasses

    from ..optim.spec import OptimizerSpec
    from ..runner import resolve_device
    from ..suite import load_suite
    from .cache import cache_path, ensure_meta_trained
    from .checkpoint import load_checkpoint, save_checkpoint
    from .spec import MetaTrainingSpec

    from ..training import keep_freed_memory

    keep_freed_memory()  # this process trains: reuse freed memory (see keep_freed_memory)
    device = resolve_device(args.device)
    config: dict[str, Any] = {}
    hparams: dict[str, Any] = {}
    entry = args.optimizer
    if args.suite:
        suite = load_suite(args.suite)
        matches = [o for o in suite.optimizers if args.optimizer in (o.name, o.entry)]
        if not matches:
            raise UsageError(
                f"suite {suite.name!r} has no optimizer {args.optimizer!r}; expected one of: "
                f"{', '.join(o.name for o in suite.optimizers)}"
            )
        entry, hparams = matches[0].entry, dict(matches[0].hparams)
        config = {**(suite.meta_training or {}), **(matches[0].meta_training or {})}
    hparams.update(dict(args.settings))
    flags = {"tasks": args.tasks, "steps": args.steps, "trials": args.trials, "unroll": args.unroll, "lr": args.lr,
             "batch_size": args.batch_size, "seed": args.seed, "param_noise": True if args.param_noise else None}
    config.update({k: v for k, v in flags.items() if v is not None})
    if not config.get("tasks"):
        raise UsageError("meta-train needs training tasks (expected --tasks mnist[,kmnist] or --suite NAME)")
    spec = MetaTrainingSpec.from_config(config)
    optimizer = registry.resolve(OptimizerSpec(entry, tuple(sorted(hparams.items()))))
    if not optimizer.learned:
        learned = [e.name for e in registry.entries() if _learned_entry(registry, e.name)]
        raise UsageError(f"optimizer {entry!r} is not learned; expected one of: {', '.join(learned)}")
    optimizer = dataclasses.replace(optimizer, meta_training=spec)
    results = Path(args.results)
    if args.force:
        cache_path(results, optimizer).unlink(missing_ok=True)
    for dataset in {t.dataset for t in spec.tasks}:
        dataset.load(data_dir)  # fail fast on missing data
    ready = ensure_meta_trained(optimizer, results_dir=results, data_dir=data_dir, device=device, log=print)
    checkpoint = load_checkpoint(ready.checkpoint)
    trial_loss = checkpoint.history.get("trial_loss", [])
    if trial_loss:
        print(f"meta-loss (mean learner loss per trial): first {trial_loss[0]:.4f}, last {trial_loss[-1]:.4f}, "
              f"over {len(trial_loss)} trials in {checkpoint.wall_time_s:.1f} s")
    print(f"checkpoint: {ready.checkpoint}")
    if args.out:
        print(f"copied to: {save_checkpoint(dataclasses.replace(checkpoint, path=None), args.out)}")
    return 0


def _learned_entry(registry: Any, name: str) -> bool:
    try:
        return registry.resolve(name).learned
    except Exception:
        return False
