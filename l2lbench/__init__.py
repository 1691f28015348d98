"""l2lbench: a benchmark suite for learned optimisers.

Importing the package has no side effects: no device set-up, no registry mutation, no
dataset access. The functional optimiser interface lives in :mod:`l2lbench.optim.base`.
"""

__version__ = "0.1.0"
