"""Every speed specialisation of l2lbench, behind one boundary.

Each optimiser and the harness keep one plain reference implementation where a reader
expects it (:func:`l2lbench.optimizers.lstm.lstm_layer`, the one-seed loop of
:mod:`l2lbench.execute.metatest`, ``functional_call`` in :mod:`l2lbench.execute.learner`).
The modules here hold the faster forms of the same computations, and their only contract
is to equal the reference to float rounding (``tests/test_fastpath.py`` holds every one of
them to it):

* :mod:`~l2lbench.fastpath.lstm`: the coordinatewise LSTM's in-place (meta-test), fused
  (meta-training) and C forms, shared by the LSTM optimiser and MTL2L;
* :mod:`~l2lbench.fastpath.mtl2l`: MTL2L's hypernetworks at meta-test;
* :mod:`~l2lbench.fastpath.seeds`: the batched-seed execution modes of meta-test;
* :mod:`~l2lbench.fastpath.learner`: the stacked forward of S seeds' learners;
* :mod:`~l2lbench.fastpath.memory`: keeping freed memory in the process for reuse;
* :mod:`~l2lbench.fastpath.meta_adam`: meta-training's Adam without ``torch.optim``'s imports;
* :mod:`~l2lbench.fastpath.native`: the C kernels.

What each one does and why, with the timings that motivated it, is in
``docs/performance.md``. ``L2LBENCH_FASTPATH=0`` switches them all off (the C kernels
too): the references run everywhere, slower, to float rounding the same numbers.
"""

from __future__ import annotations

import os

SWITCH_ENV = "L2LBENCH_FASTPATH"  # "0": run the plain references everywhere


def enabled() -> bool:
    """Whether fast paths may run (read at every call: a test can switch them off)."""
    return os.environ.get(SWITCH_ENV, "1") != "0"
