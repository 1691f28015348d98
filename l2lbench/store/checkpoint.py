"""Checkpoints of meta-trained optimisers: meta-parameters + config + provenance, versioned.

A checkpoint is a ``torch.save`` file of plain data only (dicts, lists, numbers, strings,
tensors)::

    {"format": "l2lbench-checkpoint", "schema_version": 1,
     "optimizer": {"entry": "lstm", "hparams": {...}},
     "meta_training": {...MetaTrainingSpec config...} or None,
     "state_dict": {...meta-parameters and buffers...},
     "history": {"trial_loss": [...], "unroll_loss": [...]},
     "wall_time_s": ..., "provenance": {...}}

It is written atomically (temporary file in the same folder, fsync, rename), so a crash
mid-save leaves either the old file or none. It is read with ``torch.load(...,
weights_only=True)``, which refuses any pickled object other than those plain types: a
crafted checkpoint cannot run code here.
"""

from __future__ import annotations

import glob
import io
import json
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from l2lbench.store.atomic import write_atomically
from l2lbench.errors import CheckpointError, RunError
from l2lbench.spec.hashing import canonical_json

FORMAT = "l2lbench-checkpoint"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """A meta-trained optimiser as stored (``path`` is where it was read from, if anywhere)."""

    entry: str
    hparams: dict[str, Any]
    state_dict: dict[str, Tensor]
    meta_training: dict[str, Any] | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    wall_time_s: float = 0.0
    learner_steps: int = 0  # every learner step meta-training took (all ES/PES particles)
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def describe(self) -> str:
        return f"{self.entry} {canonical_json(self.hparams)}"

    def summary(self) -> dict[str, Any]:
        """What a run's provenance records about the optimiser's meta-training."""
        info: dict[str, Any] = {"wall_time_s": self.wall_time_s, "checkpoint": str(self.path) if self.path else None}
        if self.meta_training is not None:
            tasks = self.meta_training.get("tasks", [])
            info["horizon"] = max((t.get("steps", 0) for t in tasks), default=None)
            info["trials"] = self.meta_training.get("trials")
            info["datasets"] = _dataset_names(tasks)
            info["estimator"] = self.meta_training.get("estimator", "tbptt")  # a tbptt config omits it
        if self.learner_steps:
            info["learner_steps"] = self.learner_steps
        return info

    def bind(self, optimizer: Any, *, entry: str, hparams: Mapping[str, Any]) -> Any:
        """``optimizer`` (built from ``entry`` with ``hparams``) bound to these meta-parameters.

        Raises:
            CheckpointError: the checkpoint is for another optimiser or configuration, or
                its tensors do not fit the module the plug-in builds.
        """
        where = f"checkpoint {self.path}" if self.path else "checkpoint"
        if entry != self.entry or canonical_json(dict(hparams)) != canonical_json(self.hparams):
            raise CheckpointError(
                f"{where} holds optimizer {self.describe()}, not {entry} {canonical_json(dict(hparams))}"
            )
        broken = sorted(k for k, v in self.state_dict.items()
                        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()))
        if broken:
            # Meta-training that blew up: its runs would be stored as "diverged" runs of an
            # optimiser that never existed.
            raise CheckpointError(f"{where} has non-finite meta-parameters ({', '.join(broken)}); "
                                  "expected finite values (meta-train it again)")
        module = optimizer.init_meta(generator=torch.Generator().manual_seed(0))
        try:
            module.load_state_dict(self.state_dict, strict=True)
        except (RuntimeError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{where} does not fit optimizer {entry}: {first}") from None
        module.eval()
        module.requires_grad_(False)
        return optimizer.with_meta(module)

    def payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "optimizer": {"entry": self.entry, "hparams": _plain(self.hparams)},
            "meta_training": _plain(self.meta_training),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict.items()},
            "history": {k: [float(x) for x in v] for k, v in self.history.items()},
            "wall_time_s": float(self.wall_time_s),
            "learner_steps": int(self.learner_steps),
            "provenance": _plain(self.provenance),
        }


def _plain(value: Any) -> Any:
    # Only builtin types may be pickled: weights_only loading refuses anything else, even
    # harmless str subclasses such as torch.__version__.
    return json.loads(json.dumps(value, default=str))


def _dataset_names(tasks: list[dict[str, Any]]) -> list[str]:
    from l2lbench.tasks.datasets import dataset_from_config

    names: list[str] = []
    for task in tasks:
        try:
            name = dataset_from_config(task["dataset"]).name
        except Exception:  # a checkpoint from a newer version may name datasets we lack
            name = str(task.get("dataset", {}).get("kind", "?"))
        if name not in names:
            names.append(name)
    return names


#: A temporary checkpoint file lives for the seconds of one write; one this old was left
#: by a process killed while writing, and is removed by the next write of the same file.
STALE_TEMP_S = 600


def save_checkpoint(checkpoint: Checkpoint, path: Path | str) -> Path:
    """Write ``checkpoint`` to ``path`` atomically; returns the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        buffer = io.BytesIO()
        torch.save(checkpoint.payload(), buffer)
        write_atomically(path, lambda handle: handle.write(buffer.getvalue()), durable=True)
    except OSError as exc:  # a full disk or a lost mount: a runtime failure, not bad input
        raise RunError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
    return path


def _remove_stale_temps(path: Path) -> None:
    """Delete ``.<name>.*.tmp`` siblings of ``path`` older than :data:`STALE_TEMP_S`
    (younger ones may belong to another process writing the same file right now)."""
    now = time.time()
    for temp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - temp.stat().st_mtime > STALE_TEMP_S:
                temp.unlink()
        except OSError:  # gone already, or not ours to delete: never a reason to fail a save
            pass




def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read and validate a checkpoint without unpickling arbitrary objects.

    Raises:
        CheckpointError: missing, truncated, corrupt, unsafe, or not an l2lbench
            checkpoint of a schema this version reads.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a file written by l2lbench meta-train)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported object"
        if "weights only load failed" in reason.lower() or "unsupported" in reason.lower() or "global" in reason.lower():
            raise CheckpointError(
                f"checkpoint {path} is refused: it holds pickled objects other than tensors and plain "
                "values, and loading them could run code"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt: {reason}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, KeyError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupt?): {reason}") from None
    return _validate(raw, path)


def _validate(raw: Any, path: Path) -> Checkpoint:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an l2lbench checkpoint (expected a file written by l2lbench meta-train)")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has schema version {version!r}; this l2lbench reads version {SCHEMA_VERSION} "
            "(meta-train it again with this version)"
        )
    optimizer = raw.get("optimizer")
    state = raw.get("state_dict")
    if (
        not isinstance(optimizer, dict)
        or not isinstance(optimizer.get("entry"), str)
        or not isinstance(optimizer.get("hparams"), dict)
        or not isinstance(state, dict)
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())
    ):
        raise CheckpointError(f"checkpoint {path} is malformed (optimizer or state_dict missing or of the wrong type)")
    meta_training = raw.get("meta_training")
    return Checkpoint(
        entry=optimizer["entry"],
        hparams=optimizer["hparams"],
        state_dict=state,
        meta_training=meta_training if isinstance(meta_training, dict) else None,
        history={k: list(v) for k, v in (raw.get("history") or {}).items() if isinstance(v, list)},
        wall_time_s=float(raw.get("wall_time_s") or 0.0),
        learner_steps=int(raw.get("learner_steps") or 0),  # 0: written before it was recorded
        provenance=raw.get("provenance") if isinstance(raw.get("provenance"), dict) else {},
        path=path,
    )


def file_digest(path: Path | str) -> str:
    """SHA-256 of a checkpoint file (keys the results of runs that used it)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
