"""Content hashes and derived seeds: stable across processes, machines and Python versions.

Python's built-in ``hash`` is salted per process, so everything that keys stored results
or seeds a generator goes through SHA-256 of a canonical JSON encoding instead.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any


def canonical_json(obj: Any) -> str:
    """Encode ``obj`` as JSON with sorted keys and no whitespace.

    Tuples become lists; floats keep ``repr`` precision. Non-finite floats are refused
    because they have no JSON spelling and would make two different specs collide.

    >>> canonical_json({"b": (1, 2), "a": 0.5})
    '{"a":0.5,"b":[1,2]}'
    """

    def check(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cannot hash a non-finite float: {value!r}")
        if isinstance(value, dict):
            return {str(k): check(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [check(v) for v in value]
        return value

    return json.dumps(check(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(obj: Any, length: int = 16) -> str:
    """Hex SHA-256 prefix of ``canonical_json(obj)``.

    >>> content_hash({"a": 1}) == content_hash({"a": 1})
    True
    """
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. task hash, seed index, purpose).

    Every optimiser run on the same task and seed index derives the same seeds, which is
    what makes runs paired across optimisers.

    >>> derive_seed("task", 0, "init") == derive_seed("task", 0, "init")
    True
    >>> derive_seed("task", 0, "init") != derive_seed("task", 1, "init")
    True
    """
    digest = hashlib.sha256(canonical_json(list(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
