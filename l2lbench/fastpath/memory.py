"""Keeping freed memory in the process for reuse (glibc's ``malloc`` settings)."""

from __future__ import annotations


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the
    system at once; call it once at the start of a process that trains (the command line).

    PyTorch allocates CPU tensors with plain ``malloc``. By default glibc returns a freed
    block of more than a few MB to the system (``munmap``, or trimming the heap) and maps
    fresh pages for the next one, so a step that allocates the LSTM optimisers' gate
    matrix pays a page fault per 4 KB page, now and then (``docs/performance.md``). With
    allocations up to 32 MB served from the heap and the heap trimmed only beyond 512 MB
    free, the memory is reused: the resident set stays at its high-water mark instead of
    shrinking between steps.

    Returns:
        Whether the setting took effect (``False`` where the C library is not glibc).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 512 * 2**20))
