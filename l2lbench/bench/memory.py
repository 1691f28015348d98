"""Resident memory: :class:`MemoryProbe` for this process, and the peak of meta-training
measured in a fresh process (see :mod:`l2lbench.bench` for the method)."""

from __future__ import annotations

import gc
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from l2lbench.bench.figures import difference, rounded
from l2lbench.fastpath.memory import keep_freed_memory
from l2lbench.execute.metatrain import meta_train
from l2lbench.spec.metatraining import MetaTrainingSpec

_MB = 1024 * 1024


class MemoryProbe:
    """Resident memory of this process (see :mod:`l2lbench.bench` for the method)."""

    def __init__(self) -> None:
        self.proc = Path("/proc/self/status").is_file()
        self.resettable = self.proc and self._reset()

    @property
    def method(self) -> str:
        if self.resettable:
            return "VmRSS and VmHWM of /proc/self/status; VmHWM reset per measurement via /proc/self/clear_refs"
        if self.proc:
            return "VmRSS of /proc/self/status; peak = getrusage ru_maxrss (process lifetime peak, not reset)"
        return "getrusage ru_maxrss only (process lifetime peak, not reset); no resident-set growth"

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _status(self, key: str) -> float | None:
        if not self.proc:
            return None
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / _MB
        return None

    def rss_mb(self) -> float | None:
        return self._status("VmRSS")

    def peak_mb(self) -> float:
        if self.resettable:
            value = self._status("VmHWM")
            if value is not None:
                return value
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss / _MB if sys.platform == "darwin" else maxrss * 1024 / _MB

    def measure(self, fn: Callable[[], Any]) -> dict[str, float | None]:
        """Run ``fn``; RSS before and after it, and the peak while it ran (MB)."""
        gc.collect()
        if self.resettable:
            self._reset()
        before = self.rss_mb()
        fn()
        peak = self.peak_mb()
        gc.collect()
        after = self.rss_mb()
        return {
            "rss_before_mb": rounded(before),
            "rss_after_mb": rounded(after),
            "rss_growth_mb": difference(after, before),
            **_peak(peak, before),
        }


def _peak(peak: float, before: float | None) -> dict[str, float | None]:
    return {"peak_rss_mb": rounded(peak), "peak_growth_mb": difference(peak, before)}


def meta_training_memory(
    optimizer: Any,
    spec: MetaTrainingSpec,
    *,
    data_dir: Path,
    device: torch.device,
    probe: MemoryProbe,
    fresh_process: bool,
    keep_freed: bool = False,
) -> dict[str, Any]:
    """Resident memory of :func:`~l2lbench.execute.metatrain.meta_train` with ``spec``, in a
    fresh process when asked and possible (``process`` says where it was measured; with
    ``keep_freed`` that process first calls :func:`~l2lbench.fastpath.memory.keep_freed_memory`,
    as this one did)."""
    note = None
    if fresh_process:
        try:
            return {"process": "fresh", **_in_fresh_process(optimizer, spec, data_dir, device, keep_freed)}
        except Exception as exc:  # e.g. a plug-in loaded from a file cannot be pickled
            note = f"a fresh process failed ({type(exc).__name__}: {exc}); measured in this process"
    figures = probe.measure(lambda: meta_train(optimizer, spec, data_dir=data_dir, device=device, progress=False))
    return {"process": "this", **figures, **({"note": note} if note else {})}


def _in_fresh_process(optimizer: Any, spec: MetaTrainingSpec, data_dir: Path, device: torch.device, keep_freed: bool) -> dict[str, Any]:
    import multiprocessing
    import queue

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(
        target=_fresh_meta_training,
        args=(optimizer, spec, data_dir, str(device), torch.get_num_threads(), keep_freed, results),
        daemon=True,
    )
    process.start()
    try:
        while True:
            try:
                result = results.get(timeout=1.0)
                break
            except queue.Empty:
                if not process.is_alive() and results.empty():
                    raise RuntimeError(f"the measuring process exited with code {process.exitcode}") from None
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def _fresh_meta_training(
    optimizer: Any, spec: MetaTrainingSpec, data_dir: Path, device: str, threads: int, keep_freed: bool, results: Any
) -> None:
    """In a spawned process: meta-train, report RSS after the imports and the peak."""
    try:
        torch.set_num_threads(threads)
        if keep_freed:
            keep_freed_memory()
        probe = MemoryProbe()
        before = probe.rss_mb()
        meta_train(optimizer, spec, data_dir=data_dir, device=torch.device(device), progress=False)
        results.put({"rss_before_mb": rounded(before), **_peak(probe.peak_mb(), before)})
    except BaseException as exc:  # reported to the parent, which falls back
        results.put({"error": f"{type(exc).__name__}: {exc}"})
