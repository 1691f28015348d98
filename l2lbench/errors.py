"""Exceptions that the command line turns into one-line messages and exit codes.

Exit codes: 0 success, 2 bad usage or input, 1 a failure while running.
"""

from __future__ import annotations


class L2LBenchError(Exception):
    """Base class of the errors l2lbench reports as one line (no traceback)."""

    exit_code = 1


class UsageError(L2LBenchError):
    """Bad usage or bad input: the message names the bad value and what was expected."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """A spec, suite file or hyperparameter that does not validate."""


class DataMissingError(UsageError):
    """A dataset whose files are absent here and could not be downloaded."""


class DataCorruptError(UsageError):
    """A dataset file that fails its checksum or cannot be parsed."""


class PluginError(UsageError):
    """An optimiser plug-in that fails to import or does not satisfy the interface."""


class RunError(L2LBenchError):
    """A failure while running (one or more runs failed, the store is unusable, ...)."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be loaded safely or does not match the optimiser asked for."""


class Stopped(KeyboardInterrupt):
    """The command was told to stop: Ctrl-C, ``SIGTERM`` or ``SIGHUP`` (see
    :func:`l2lbench.cli.main`). A ``KeyboardInterrupt`` that is not this one was raised by
    a plug-in itself, and fails only that plug-in's runs.

    ``stored``: how many runs this command had finished and stored, where it counts them.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.stored: int | None = None


# What a plug-in may raise without ending the benchmark: any error, and sys.exit() too.
# KeyboardInterrupt (Ctrl-C) and RunTimeout are handled apart (see l2lbench.execute.isolation.own_interrupts).
PLUGIN_FAULTS = (Exception, SystemExit)


def describe_fault(exc: BaseException) -> str:
    """A fault as one line: its type and the first line of its message."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")
