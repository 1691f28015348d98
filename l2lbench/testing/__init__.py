"""Tools for plug-in authors: the optimiser conformance suite."""

from l2lbench.testing.conformance import CHECKS, Skipped, run_check, run_conformance

__all__ = ["CHECKS", "Skipped", "run_check", "run_conformance"]
