"""What a job will take, estimated from its spec before anything runs.

A spec such as ``steps = 10**12``, ``seeds = 10**6`` or a synthetic dataset of 10^6
images of 128x128 would otherwise run until the machine is out of memory. Each estimate
is an upper bound of the main terms, not a measurement: it refuses what cannot fit and
lets everything plausible through (``--force`` tries anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Peak bytes per pixel of a dataset while it is loaded or generated: the uint8 images kept,
# plus float32 temporaries (a synthetic dataset mixes prototypes and noise in float32).
LOAD_BYTES_PER_PIXEL = 24
# Float32 copies of the learner's parameters per seed: parameters, gradients, optimiser
# state (Adam: two), and the temporaries of one update.
HAND_DESIGNED_COPIES = 8
# A coordinatewise LSTM optimiser keeps per parameter its hidden and cell states (two
# layers of 20 units) and, per step, its gates: about 200 floats.
LEARNED_COPIES = 200
# A stored curve point: a Python float in a list (about 32 bytes) and its JSON text.
CURVE_POINT_BYTES = 64
# A process's own heap with torch and l2lbench imported, before any work (about 790 MB
# measured, as RLIMIT_DATA counts it).
PROCESS_BYTES = 2**30
# Multiply-adds a CPU thread does per second on these small products (for time only).
CPU_FLOPS = 5e9


@dataclass(frozen=True)
class JobSize:
    """A job's estimated peak memory (bytes) and compute time (seconds on one thread)."""

    memory: int
    seconds: float


def parameter_count(task: Any) -> int:
    """The learner's parameters, from a module built on the meta device (no memory)."""
    module = task.learner.build(task.dataset.input_shape, task.dataset.num_classes)
    return sum(p.numel() for p in module.parameters())


def job_size(task: Any, seeds: int, *, learned: bool) -> JobSize:
    """Estimate one job: ``seeds`` runs of ``task`` batched together."""
    pixels = math.prod(task.dataset.input_shape)
    params = parameter_count(task)
    data = task.dataset.num_examples * pixels * LOAD_BYTES_PER_PIXEL
    copies = LEARNED_COPIES if learned else HAND_DESIGNED_COPIES
    state = seeds * params * 4 * copies
    activations = seeds * task.batch_size * (pixels + params // max(1, pixels)) * 4 * 3
    evaluated = task.eval_examples or task.dataset.num_examples
    evaluation = seeds * evaluated * (pixels + task.dataset.num_classes) * 4
    curves = seeds * (task.steps + 3 * len_evals(task)) * CURVE_POINT_BYTES
    flops = seeds * task.steps * task.batch_size * params * 6 + seeds * len_evals(task) * evaluated * params * 2
    return JobSize(int(data + state + activations + evaluation + curves), flops / CPU_FLOPS)


def len_evals(task: Any) -> int:
    """How many evaluations a task makes (without listing the steps)."""
    return task.steps // task.eval_every + 2


def gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"


def duration(seconds: float) -> str:
    for unit, length in (("years", 365 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.0f} s"


#: Compute beyond which a job is taken for a typo rather than a plan (``--force`` runs it).
MAX_JOB_SECONDS = 365 * 86400


RUN_REMEDY = "fewer steps, seeds or images, a larger --max-memory, or --force to try anyway"


def check_fits(sizes: list[tuple[Any, int, JobSize]], *, budget: int | None, remedy: str = RUN_REMEDY) -> None:
    """Refuse, in one line, a job that cannot fit.

    Args:
        sizes: ``(task, seeds, size)`` of every job and meta-training the command plans.
        budget: bytes one worker may take (None: unknown, only compute is checked).
        remedy: what the user may do instead, for the message.

    Raises:
        UsageError: a job needs more memory than ``budget`` or more compute than
            :data:`MAX_JOB_SECONDS`.
    """
    from l2lbench.errors import UsageError

    for task, seeds, size in sizes:
        what = f"task {task.name} with {seeds} seed{'s' if seeds > 1 else ''}"
        if budget is not None and size.memory + PROCESS_BYTES > budget:
            raise UsageError(
                f"{what} needs about {gib(size.memory + PROCESS_BYTES)} of memory (estimated from its spec), more "
                f"than the {gib(budget)} a worker may take (expected {remedy})"
            )
        if size.seconds > MAX_JOB_SECONDS:
            raise UsageError(
                f"{what} needs about {duration(size.seconds)} of compute (estimated from its spec; expected at most "
                f"{duration(MAX_JOB_SECONDS)} a job: {remedy})"
            )


def workers_that_fit(workers: int, largest_job: int, memory: int | None, cores: int) -> int:
    """At most as many local workers as the machine's memory holds, each with a process and
    the largest job, and as it has cores (each run takes one thread: more workers than
    cores only take turns)."""
    fitting = min(workers, cores)
    if memory is not None:
        fitting = min(fitting, int(memory * 0.9) // (PROCESS_BYTES + largest_job))
    return max(1, fitting)
