"""Wall-clock limits inside a running process: :func:`time_limit` raises
:class:`RunTimeout` in the calling thread once its seconds pass.

Used for each run (``--run-timeout``) and for importing an installed plug-in. A limit asks
the code to stop; code that does not (it swallows every exception, or sits in C code) is
stopped from outside by ending its worker process (see :mod:`l2lbench.execute.parallel`).
"""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator


class RunTimeout(BaseException):
    """Raised inside a run that exceeded its time limit.

    A ``BaseException``, like ``KeyboardInterrupt``, so that neither a plug-in's nor the
    runner's ``except Exception`` swallows it.
    """


def timeout_reason(seconds: float) -> str:
    """The error recorded for a run stopped by the time limit."""
    return f"exceeded --run-timeout {seconds:g}s"


IMPORT_GRACE_S = 0.05  # an interrupt that finds an import in progress retries this much later


def _importing(frame: Any) -> bool:
    """Whether ``frame`` runs inside an import: interrupting one would leave a module
    half-initialised for the rest of the process (torch imports much lazily)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`RunTimeout` in the calling thread once ``seconds`` of wall time pass.

    In the main thread: a ``SIGALRM`` timer (``setitimer``), which interrupts Python code
    and blocking calls (sleep, I/O, lock waits); the previous handler and timer come
    back afterwards. In any other thread: an asynchronous exception, which interrupts
    Python code at its next bytecode (a blocking call first has to return). An import in
    progress is not interrupted (it would stay broken for the whole process): the
    interrupt waits for it to end, for at most ``seconds`` more. ``None`` means no limit.

    Example:
        >>> with time_limit(5.0):
        ...     total = sum(range(1000))
    """
    if seconds is None:
        yield
        return
    give_up_waiting = time.monotonic() + 2 * seconds
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        active = [True]

        def on_alarm(signum: int, frame: Any) -> None:
            if not active[0]:
                return  # the run ended as the timer fired
            if _importing(frame) and time.monotonic() < give_up_waiting:
                signal.setitimer(signal.ITIMER_REAL, IMPORT_GRACE_S)
                return
            raise RunTimeout(seconds)

        previous = signal.signal(signal.SIGALRM, on_alarm)
        outer_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
        start = time.monotonic()
        try:
            yield
        finally:
            active[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer_delay:  # someone else's timer was running: let it go on
                signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - start), 1e-3))
        return
    target, lock, armed, timers = threading.get_ident(), threading.Lock(), [True], []

    def interrupt() -> None:
        with lock:
            if not armed[0]:
                return
            if _importing(sys._current_frames().get(target)) and time.monotonic() < give_up_waiting:
                arm(IMPORT_GRACE_S)
                return
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(RunTimeout))

    def arm(delay: float) -> None:
        timer = threading.Timer(delay, interrupt)
        timer.daemon = True
        timers.append(timer)
        timer.start()

    arm(seconds)
    try:
        yield
    finally:
        with lock:
            armed[0] = False
            for timer in timers:
                timer.cancel()
