"""The workloads ``l2lbench bench`` times, each returning seconds: the bare hand-written torch
loop it compares against, the runner's meta-test, and a meta-training trial."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from l2lbench.execute.learner import FunctionalLearner
from l2lbench.execute.metatest import PreparedData, batch_schedule, run_seeds
from l2lbench.execute.metatrain import meta_train
from l2lbench.spec.hashing import derive_seed
from l2lbench.spec.metatraining import MetaTrainingSpec
from l2lbench.spec.task import TaskSpec

#: The bare loops, by the name the report gives them.
REFERENCES = {"torch-sgd": torch.optim.SGD, "torch-adam": torch.optim.Adam}
REFERENCE_LR = 0.01  # the paper's baselines


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
    """Seconds for :func:`~l2lbench.execute.metatest.run_seeds` over seeds ``0..seeds-1``."""
    start = time.perf_counter()
    run_seeds(task, optimizer, learner, data, list(range(seeds)), device=device, vectorize=True)
    return time.perf_counter() - start


def meta_training_spec(task: TaskSpec, steps: int, unroll: int) -> MetaTrainingSpec:
    """One trial of one learner on ``task`` for ``steps`` steps, unrolled ``unroll`` at a time."""
    return MetaTrainingSpec(tasks=(dataclasses.replace(task, steps=steps),), trials=1, unroll=min(unroll, steps))


def meta_training_step(optimizer: Any, task: TaskSpec, steps: int, unroll: int, data_dir: Path, device: torch.device) -> float:
    """Seconds per learner step of :func:`~l2lbench.execute.metatrain.meta_train` with one
    learner, between the first and the last meta-update (set-up excluded)."""
    marks: list[tuple[int, float]] = []
    spec = meta_training_spec(task, steps, unroll)
    meta_train(optimizer, spec, data_dir=data_dir, device=device, progress=False,
               on_unroll=lambda trial, step, loss: marks.append((step, time.perf_counter())))
    if len(marks) < 2:
        raise ValueError(f"meta-training timing needs two unrolls: meta_steps ({steps}) must exceed meta_unroll ({unroll})")
    (first_step, first), (last_step, last) = marks[0], marks[-1]
    return (last - first) / (last_step - first_step)
