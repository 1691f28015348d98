"""l2lbench: a benchmark suite for learned optimisers.

Importing the package has no side effects: no device set-up, no registry mutation, no
dataset access. The functional optimiser interface lives in :mod:`l2lbench.plugin.base`.
``l2lbench.load_optimizer(path, model.parameters())`` turns a meta-trained checkpoint
into a ``torch.optim.Optimizer`` (imported on first use).
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that `import l2lbench` stays cheap (the CLI imports it on every call).
    if name == "load_optimizer":
        from l2lbench.execute.metatrained import load_optimizer

        return load_optimizer
    raise AttributeError(f"module 'l2lbench' has no attribute {name!r}")
