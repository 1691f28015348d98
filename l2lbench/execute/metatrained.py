"""Where a learned optimiser's meta-parameters come from at meta-test.

Either a checkpoint the user names (``--checkpoint NAME=PATH``; results are keyed by the
file's digest), or the cache under ``<results>/checkpoints/``: one file per (plug-in
config and code, meta-training config, seed, protocol version), named by the optimiser's
store key, so every suite that needs the same meta-trained optimiser reuses it, a re-run
never meta-trains twice, and changed code never meets an older checkpoint.

Before a suite's meta-tests, :func:`with_meta_training` meta-trains (or finds in the cache)
every learned optimiser its jobs need, once each, in worker processes when there are any.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch

from l2lbench.store import codeid
from l2lbench.errors import PLUGIN_FAULTS, CheckpointError, L2LBenchError, UsageError, describe_fault
from l2lbench.plugin.base import capability
from l2lbench.plan.runs import RunJob, is_learned
from l2lbench.plugin.registry import ResolvedOptimizer
from l2lbench.execute.isolation import own_interrupts
from l2lbench.execute.parallel import Executor, WorkerLost, run_threads
from l2lbench.execute.portable import PortableOptimizer, unresolvable
from l2lbench.store.provenance import provenance
from l2lbench.store.checkpoint import Checkpoint, file_digest, load_checkpoint, save_checkpoint
from l2lbench.execute.metatrain import meta_train

CHECKPOINT_FOLDER = "checkpoints"


def cache_path(results_dir: Path, optimizer: ResolvedOptimizer) -> Path:
    return Path(results_dir) / CHECKPOINT_FOLDER / f"{optimizer.entry.name}-{optimizer.hash}.pt"


def use_checkpoint_file(optimizer: ResolvedOptimizer, path: Path | str) -> ResolvedOptimizer:
    """``optimizer`` with its meta-parameters from ``path`` (checked to be for it)."""
    path = Path(path)
    built = optimizer.build()
    if not capability(built, "learned"):
        raise UsageError(f"optimizer {optimizer.name!r} is not a learned optimizer; a checkpoint applies only to learned ones")
    load_checkpoint(path).bind(built, entry=optimizer.entry.name, hparams=optimizer.hparams)
    return dataclasses.replace(optimizer, meta_training=None, checkpoint=path, checkpoint_digest=file_digest(path))


def ensure_meta_trained(
    optimizer: ResolvedOptimizer,
    *,
    results_dir: Path,
    data_dir: Path,
    device: torch.device,
    progress: bool | None = None,
    log: Callable[[str], None] = lambda message: None,
    force: bool = False,
) -> ResolvedOptimizer:
    """``optimizer`` with ``checkpoint`` set: the given file, the cached one, or a new one
    (``force``: a new one even where one is cached; it replaces that file once written).

    Raises:
        UsageError: a learned optimiser with neither a checkpoint nor a meta-training config.
    """
    ready = cached(optimizer, results_dir=results_dir, log=log, force=force)
    if ready is not None:
        return ready
    checkpoint = train_checkpoint(optimizer, data_dir=data_dir, device=device, progress=progress, log=log)
    return store_checkpoint(optimizer, checkpoint, results_dir=results_dir, log=log)


def cached(
    optimizer: ResolvedOptimizer, *, results_dir: Path, log: Callable[[str], None], force: bool = False
) -> ResolvedOptimizer | None:
    """``optimizer`` with its checkpoint where it has one (given, or usable in the cache
    and not ``force``d anew); None where it must be meta-trained.

    Raises:
        UsageError: a learned optimiser with neither a checkpoint nor a meta-training config.
    """
    if optimizer.checkpoint is not None:
        return optimizer
    if optimizer.meta_training is None:
        raise UsageError(
            f"learned optimizer {optimizer.name!r} has no meta-training config and no checkpoint "
            f"(expected a [meta_training] table in the suite or --checkpoint {optimizer.name}=PATH)"
        )
    path = cache_path(results_dir, optimizer)
    if path.is_file() and not force:
        try:
            use_checkpoint_file(optimizer, path)
            log(f"{optimizer.name}: using cached meta-trained checkpoint {path}")
            return dataclasses.replace(optimizer, checkpoint=path)
        except CheckpointError as exc:  # e.g. a file from an older version: train anew
            log(f"{optimizer.name}: cached checkpoint unusable ({exc}); meta-training again")
    return None


def train_checkpoint(
    optimizer: ResolvedOptimizer,
    *,
    data_dir: Path,
    device: torch.device,
    progress: bool | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> Checkpoint:
    """Meta-train ``optimizer`` by its meta-training config; writes nothing (a worker
    process hands the checkpoint to the parent, the only process that writes)."""
    spec = optimizer.meta_training
    log(f"{optimizer.name}: meta-training on {spec.name} ...")
    with run_threads():  # as every run: its numbers must not depend on where it runs
        result = meta_train(optimizer.build(), spec, data_dir=data_dir, device=device, progress=progress)
    return Checkpoint(
        entry=optimizer.entry.name,
        hparams=dict(optimizer.hparams),
        state_dict=result.module.state_dict(),
        meta_training=spec.config(),
        history={"trial_loss": result.trial_loss, "unroll_loss": result.unroll_loss},
        wall_time_s=result.wall_time_s,
        learner_steps=result.learner_steps,
        # The code it was trained with (its file name keys the same identity).
        provenance={**provenance(device), "code": dict(optimizer.entry.code), "protocol": codeid.PROTOCOL_VERSION},
    )


def store_checkpoint(
    optimizer: ResolvedOptimizer, checkpoint: Checkpoint, *, results_dir: Path, log: Callable[[str], None]
) -> ResolvedOptimizer:
    """Write a freshly meta-trained checkpoint into the cache; ``optimizer`` pointing at it."""
    path = cache_path(results_dir, optimizer)
    save_checkpoint(checkpoint, path)
    losses = checkpoint.history["trial_loss"]
    log(
        f"{optimizer.name}: meta-trained in {checkpoint.wall_time_s:.1f} s "
        f"(mean learner loss, first trial {losses[0]:.4f}, last trial {losses[-1]:.4f}) -> {path}"
    )
    return dataclasses.replace(optimizer, checkpoint=path)


def build_for_meta_test(optimizer: ResolvedOptimizer, device: torch.device) -> tuple[Any, dict[str, Any] | None]:
    """The plug-in ready to meta-test on ``device``, and what to record of its meta-training.

    Hand-designed optimisers come back as built, with ``None``.
    """
    built = optimizer.build()
    if not capability(built, "learned"):
        return built, None
    if optimizer.checkpoint is None:
        raise UsageError(
            f"learned optimizer {optimizer.name!r} has no meta-parameters: meta-train it first "
            f"(l2lbench meta-train) or pass --checkpoint {optimizer.name}=PATH"
        )
    checkpoint = load_checkpoint(optimizer.checkpoint)
    bound = checkpoint.bind(built, entry=optimizer.entry.name, hparams=optimizer.hparams)
    bound.meta.to(device)
    return bound, checkpoint.summary()


def load_optimizer(checkpoint: Path | str, params: Any, *, plugins: tuple[str, ...] = (), seed: int = 0) -> Any:
    """A meta-trained optimiser from ``checkpoint`` as a ``torch.optim.Optimizer`` over ``params``.

    Args:
        checkpoint: a file written by ``l2lbench meta-train`` (or found in
            ``<results>/checkpoints/``).
        params: your model's parameters (``model.parameters()``, ``model.named_parameters()``)
            or parameter groups (dicts with ``params`` and hyperparameters such as ``lr``).
        plugins: plug-in files or modules providing the optimiser, if not built in.
        seed: seeds the generator of optimisers that draw random numbers.

    Call ``opt.step(inputs=x)`` with the input batch: context-aware optimisers (MTL2L)
    read it, the others ignore it.
    """
    from l2lbench.plugin.adapter import FunctionalAdapter
    from l2lbench.plugin.registry import OptimizerRegistry
    from l2lbench.spec.optimizer import OptimizerSpec

    loaded = load_checkpoint(checkpoint)
    registry = OptimizerRegistry.default(plugins)
    resolved = registry.resolve(OptimizerSpec(loaded.entry, tuple(sorted(loaded.hparams.items()))))
    # Parameter groups' "params" may be generators: read each once, then hand them on.
    params = [{**p, "params": list(p["params"])} if isinstance(p, dict) else p for p in params]
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    tensors = [t[1] if isinstance(t, tuple) else t for t in tensors]  # named_parameters() pairs
    if not tensors:
        raise UsageError("load_optimizer got no parameters (expected model.parameters() or parameter groups)")
    bound = loaded.bind(resolved.build(), entry=loaded.entry, hparams=resolved.hparams)
    bound.meta.to(tensors[0].device)
    return FunctionalAdapter(params, bound, seed=seed)


def with_meta_training(
    jobs: list[RunJob],
    *,
    results_dir: Path,
    data_dir: Path,
    device: torch.device,
    executor: Executor = Executor(),
    plugins: tuple[str, ...] = (),
    log: Callable[[str], None] = lambda message: None,
    retrain: bool = False,
) -> list[RunJob]:
    """Meta-train (or fetch from the cache) every learned optimiser the jobs need, once,
    before any meta-test (in parallel when the executor has workers); the jobs come back
    pointing at the checkpoints. ``retrain``: meta-train again even where a cached
    checkpoint exists (it is replaced when the new one is written)."""
    needed: dict[str, ResolvedOptimizer] = {}
    for job in jobs:
        if job.optimizer.hash not in needed and job.optimizer.checkpoint is None and is_learned(job.optimizer):
            needed[job.optimizer.hash] = job.optimizer
    ready: dict[str, ResolvedOptimizer] = {}
    failures: dict[str, str] = {}
    if executor.in_process:
        for key, optimizer in needed.items():
            try:
                with own_interrupts(optimizer.name):
                    ready[key] = ensure_meta_trained(optimizer, results_dir=results_dir, data_dir=data_dir,
                                                     device=device, log=log, force=retrain)
            except L2LBenchError:
                raise  # bad input (no meta-training config, unwritable cache): stop, exit 2
            except PLUGIN_FAULTS as exc:  # the plug-in's fault: its runs fail, the others go on
                failures[key] = f"meta-training failed: {describe_fault(exc)}"
    else:
        to_train = {}
        for key, optimizer in needed.items():
            hit = cached(optimizer, results_dir=results_dir, log=log, force=retrain)
            if hit is not None:
                ready[key] = hit
            else:
                to_train[key] = optimizer
        items = [(key, PortableOptimizer.of(o)) for key, o in to_train.items()]
        for (key, _), outcome in executor.map(_meta_train_in_worker, items, plugins, data_dir, str(device)):
            if isinstance(outcome, WorkerLost):  # the plug-in took its worker process down
                outcome = (None, [], f"meta-training failed: {outcome.reason}")
            checkpoint, lines, failure = outcome
            for line in lines:
                log(line)
            if failure is None:  # only this process writes: the worker handed the checkpoint over
                ready[key] = store_checkpoint(to_train[key], checkpoint, results_dir=results_dir, log=log)
            else:
                failures[key] = failure
    for key, failure in failures.items():
        log(f"{needed[key].name}: {failure}; its runs are recorded as failed")
    return [
        dataclasses.replace(job, optimizer=ready.get(job.optimizer.hash, job.optimizer), failure=failures.get(job.optimizer.hash))
        for job in jobs
    ]


def _meta_train_in_worker(
    item: tuple[str, PortableOptimizer], plugins: tuple[str, ...], data_dir: Path, device: str
) -> tuple[Any, list[str], str | None]:
    """Meta-train in a worker process: the checkpoint (for the parent to write), the log
    lines, and why it failed (None when it did not)."""
    lines: list[str] = []
    try:
        optimizer = item[1].resolve(plugins, torch.device(device))
    except (L2LBenchError, *PLUGIN_FAULTS) as exc:
        return None, lines, unresolvable(item[1], plugins, exc)
    if optimizer.numerics != item[1].numerics:  # the parent stores it under a key that names its numerics
        return None, lines, (f"meta-training failed: this worker computes in {optimizer.numerics} form, not the "
                             f"{item[1].numerics} its key names (a worker without the C kernels?)")
    try:
        with own_interrupts(optimizer.name):
            checkpoint = train_checkpoint(optimizer, data_dir=data_dir, device=torch.device(device), progress=False,
                                          log=lines.append)
    except L2LBenchError:
        raise
    except PLUGIN_FAULTS as exc:
        return None, lines, f"meta-training failed: {describe_fault(exc)}"
    return checkpoint, lines, None

