"""What ``l2lbench bench`` measures: :class:`BenchSpec` (no torch import here, so the command
line can be built without it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from l2lbench.spec.task import TaskSpec

#: The optimisers timed when none are named.
DEFAULT_OPTIMIZERS = ("sgd", "adam", "lstm", "mtl2l")


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

    task: "TaskSpec"
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
