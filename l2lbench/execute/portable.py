"""A resolved optimiser as plain data, so that a worker process (local or Dask) can
rebuild it from its own registry; and why a worker could not."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from l2lbench.errors import describe_fault
from l2lbench.execute.parallel import worker_registry
from l2lbench.plan.runs import numerics
from l2lbench.plugin.registry import ResolvedOptimizer
from l2lbench.spec.optimizer import OptimizerSpec


@dataclass(frozen=True)
class PortableOptimizer:
    """A resolved optimiser as plain data, rebuilt from the registry inside a worker."""

    spec: OptimizerSpec
    meta_training: Any
    checkpoint: Path | None
    checkpoint_digest: str | None
    numerics: str | None = None  # the parent's, for the checkpoint it will store under its key

    @classmethod
    def of(cls, optimizer: ResolvedOptimizer) -> "PortableOptimizer":
        return cls(optimizer.spec, optimizer.meta_training, optimizer.checkpoint, optimizer.checkpoint_digest,
                   optimizer.numerics)

    def resolve(self, plugins: tuple[str, ...], device: torch.device) -> ResolvedOptimizer:
        """The optimiser as this process builds it; its numerics are this process's own, so
        a worker that cannot take the parent's form stores its runs under their true key."""
        resolved = worker_registry(plugins).resolve(self.spec)
        resolved = dataclasses.replace(
            resolved, meta_training=self.meta_training, checkpoint=self.checkpoint, checkpoint_digest=self.checkpoint_digest
        )
        return dataclasses.replace(resolved, numerics=numerics(resolved, device))


def unresolvable(optimizer: PortableOptimizer, plugins: tuple[str, ...], exc: BaseException) -> str:
    """Why a worker process cannot build an optimiser that the parent process could (a
    plug-in that fails to import there): returned, not raised, so that one job fails and
    the others go on."""
    problems = "; ".join(worker_registry(plugins).problems) if plugins else ""
    return f"optimizer {optimizer.spec.name!r} cannot be built in the worker process: {describe_fault(exc)}" + (
        f" (plug-in problems there: {problems})" if problems else ""
    )

