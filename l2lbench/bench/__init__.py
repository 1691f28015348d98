"""What an optimiser costs on this machine, measured next to a bare hand-written torch loop.

``l2lbench bench`` (see :mod:`l2lbench.cli.bench`) runs, in one process and
interleaved repeat by repeat so that a noisy machine disturbs every figure alike:

* **the reference**: a bare PyTorch loop, ``torch.optim.SGD`` and ``torch.optim.Adam``
  (lr 0.01) on the task's learner, with the runner's seed-0 initialisation and batches;
* **meta-test**: :func:`l2lbench.execute.metatest.run_seeds`, the runner's own code path, for 1
  seed and for S seeds batched; milliseconds per learner step and per seed-step. The
  timed task evaluates only at its first and last step and on one batch of test and of
  validation examples, so the figure is the training step; one full evaluation (test and
  validation splits) is timed on its own;
* **meta-training** (learned optimisers): :func:`l2lbench.execute.metatrain.meta_train` with
  one learner, timed between the first and the last meta-update of the trial (so the
  set-up before the first unroll is excluded); milliseconds per learner step;
* **memory**: resident-set growth over a meta-test run of ``memory_steps`` steps (the
  task's own evaluation cadence), and the peak of meta-training with unroll 20.

Every time is a minimum and a median over ``repeats``. A ratio to the bare loop is given
as the ratio of the minima and the ratio of the medians (on a busy machine the minimum is
the least disturbed estimate of a cost), with the per-repeat ratios for reference. Learned optimisers run with freshly
initialised meta-parameters: their cost does not depend on the values.

Memory comes from ``/proc/self/status`` (Linux): ``VmRSS`` is the resident set now and
``VmHWM`` its high-water mark, which writing ``5`` to ``/proc/self/clear_refs`` resets to
the current RSS, so each measurement sees only its own peak. Where that reset is refused,
the peak is ``ru_maxrss`` of ``getrusage`` (the lifetime peak of the process: it can only
overstate a growth) and the report says so. ``tracemalloc`` would miss torch's tensors,
which are not allocated through Python.

Modules:
    spec: :class:`~spec.BenchSpec`, what to measure (imports no torch: the command line
        is built from it).
    workloads: the timed workloads (bare loop, meta-test, meta-training), each returning seconds.
    memory: :class:`~memory.MemoryProbe` and meta-training memory in a fresh process.
    figures: rounding, min/median summaries and ratios of measurements.
    run: :func:`~run.run_bench`, every measurement interleaved, as a JSON-ready report.
    format: the report as text tables or JSON.

Importing this package imports none of them.
"""
