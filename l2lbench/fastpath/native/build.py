"""Compiling a packaged C kernel on first use, once per machine, and loading it with ctypes.

The shared library is built with ``-march=native`` for the CPU it runs on, so the cache key
holds the source, the compiler's version, the CPU's feature flags, every compiler flag and
the kernel's interface version (:data:`ABI_VERSIONS`): a cache directory shared by machines
of different CPUs (a cluster's home directory) keeps one build per CPU kind. Builds write to
a temporary file renamed into place, so worker processes that build at the same moment
never load a half-written library.

Loading a library runs its code, so the loader trusts only what this user could have
built: the cache folder is created private (0700), and a folder or library that another
user owns, or that group or others may write, is refused (anyone could have planted a
library there); a loaded library must report the interface version that the signature
tables in ``lstm.py`` and ``dropout.py`` expect, so a stale or foreign build is refused
instead of corrupting memory.

Nothing here raises for a missing or failing compiler: :func:`load` returns ``None``, warns
once with the reason, and the callers run their PyTorch forms instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import warnings
from importlib import resources
from pathlib import Path

SWITCH_ENV = "L2LBENCH_NATIVE"  # "0": never build or load a kernel
CACHE_ENV = "L2LBENCH_NATIVE_CACHE"  # where builds are kept (default: the user cache)
# The instruction set to build for (default "native"); the tests also build the kernels
# for older x86 CPUs (AVX2, SSE2 only) to check the code paths this machine would not take.
MARCH_ENV = "L2LBENCH_NATIVE_MARCH"

COMMON_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC")
# Tried in order: with glibc's vector maths library (libmvec), then without it (other C
# libraries; the transcendental functions are then scalar, the kernel still fused).
VARIANTS = ((("-DL2L_MVEC",), ("-lmvec",)), ((), ()))


#: The interface version of each kernel (``l2l_abi_version()`` in its C file), as the
#: ctypes signature tables of its Python module expect it; bump both with any signature.
ABI_VERSIONS = {"lstm": 1, "dropout": 1}

_SWITCHED_OFF = f"switched off by {SWITCH_ENV}=0; using the PyTorch form"


class NativeKernelWarning(RuntimeWarning):
    """A C kernel could not be built or loaded; the slower PyTorch form runs instead."""


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1") != "0"


def load(name: str) -> ctypes.CDLL | None:
    """The kernel ``l2lbench/fastpath/native/<name>.c`` as a loaded library, or ``None`` (see
    :func:`unavailable_reason`) when it is switched off or cannot be built here."""
    _ASKED.add(name)
    if not enabled():
        return None
    library, _ = _load(name)
    return library


def unavailable_reason(name: str) -> str | None:
    """Why :func:`load` gives ``None`` for ``name``, or ``None`` when the kernel loads."""
    if not enabled():
        return _SWITCHED_OFF
    return _load(name)[1]


def status() -> dict[str, str]:
    """The kernels asked for since :func:`start_recording` (or since the process started):
    ``"native"`` where one runs, else why the PyTorch form runs instead; for the
    provenance of results."""
    if not enabled():
        return {name: _SWITCHED_OFF for name in sorted(_ASKED)}
    return {name: _load(name)[1] or "native" for name in sorted(_ASKED)}


def start_recording() -> None:
    """Start :func:`status` afresh, e.g. for one run in a worker that ran others before."""
    _ASKED.clear()


_ASKED: set[str] = set()


@functools.cache
def _load(name: str) -> tuple[ctypes.CDLL | None, str | None]:
    try:
        path = _built(name)
        _check_private(path, "library")
        library, reason = ctypes.CDLL(str(path)), None
        _check_abi(library, name)
    except (OSError, subprocess.SubprocessError, RuntimeError) as error:
        library, reason = None, f"the C kernel {name!r} is unavailable ({error}); using the slower PyTorch form"
        warnings.warn(reason, NativeKernelWarning, stacklevel=3)
    return library, reason


def forget() -> None:
    """Load every kernel afresh at its next use (for tests that change the environment)."""
    _load.cache_clear()
    _ASKED.clear()


def _built(name: str) -> Path:
    source = resources.files("l2lbench.fastpath.native").joinpath(f"{name}.c").read_bytes()
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    march = f"-march={os.environ.get(MARCH_ENV) or 'native'}"
    key = _cache_key(name, source=source, compiler_version=version, march=march)
    folder = _cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(folder, "cache folder")
    target = folder / f"{name}-{key}.so"
    if target.exists():
        return target
    error = ""
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        source_path = Path(scratch) / f"{name}.c"
        source_path.write_bytes(source)
        output = Path(scratch) / target.name
        for defines, libraries in VARIANTS:
            command = [compiler, *COMMON_FLAGS, march, *defines, str(source_path), "-o", str(output), *libraries]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                os.chmod(output, 0o755)  # whatever the umask: never writable by others (see _check_private)
                os.replace(output, target)
                return target
            lines = done.stderr.strip().splitlines()  # the last variant's first error is reported
            error = next((line for line in lines if "error" in line), lines[-1] if lines else f"exit {done.returncode}")
    raise RuntimeError(f"{compiler} failed: {error}")


def _cache_key(name: str, *, source: bytes | None = None, compiler_version: str | None = None,
               march: str | None = None) -> str:
    """What a build depends on: the source, the compiler's version, the CPU, every flag and
    the interface version."""
    if source is None:
        source = resources.files("l2lbench.fastpath.native").joinpath(f"{name}.c").read_bytes()
    if compiler_version is None:
        compiler_version = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, timeout=30).stdout
    march = march or f"-march={os.environ.get(MARCH_ENV) or 'native'}"
    flags = " ".join([*COMMON_FLAGS, march, *(" ".join(d + l) for d, l in VARIANTS)])
    parts = [source, compiler_version.encode(), _cpu_flags().encode(), flags.encode(), f"abi {ABI_VERSIONS[name]}".encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _check_private(path: Path, what: str) -> None:
    """Refuse a path another user could have written: owned by someone else, or writable
    by group or others."""
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise RuntimeError(
            f"refusing the {what} {str(path)!r}: owned by uid {info.st_uid} with mode {info.st_mode & 0o777:o}, "
            f"so another user could have written it (expected yours, writable by you only; set {CACHE_ENV} to a "
            "private folder)"
        )


def _check_abi(library: ctypes.CDLL, name: str) -> None:
    """Refuse a library whose interface version is not the one the signature tables expect."""
    try:
        version = library.l2l_abi_version()
    except AttributeError:
        version = None
    if version != ABI_VERSIONS[name]:
        raise RuntimeError(f"the library for {name!r} has interface version {version}, expected {ABI_VERSIONS[name]}")


def _compiler() -> str:
    configured = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "").split(" ")[0]
    for candidate in (configured, "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    import platformdirs  # only when a kernel is first built or looked up

    return Path(platformdirs.user_cache_dir("l2lbench")) / "native"
