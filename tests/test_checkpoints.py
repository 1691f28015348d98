"""Checkpoints: exact round-trips, atomic saves, and refusals that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from l2lbench.errors import CheckpointError, RunError, UsageError
from l2lbench.execute.metatrained import build_for_meta_test, ensure_meta_trained, use_checkpoint_file
from l2lbench.store.checkpoint import SCHEMA_VERSION, Checkpoint, load_checkpoint, save_checkpoint
from l2lbench.spec.metatraining import MetaTrainingSpec
from l2lbench.plugin.base import StepContext
from l2lbench.plugin.registry import OptimizerRegistry
from l2lbench.optimizers.mtl2l import mtl2l

CPU = torch.device("cpu")


def _checkpoint(entry="mtl2l", seed=0, **hparams) -> Checkpoint:
    registry = OptimizerRegistry.default(entry_points=False)
    resolved = registry.resolve(entry)
    full = {**resolved.hparams, **hparams}
    module = resolved.entry.factory(**full).init_meta(generator=torch.Generator().manual_seed(seed))
    return Checkpoint(entry=entry, hparams=full, state_dict=module.state_dict(), history={"trial_loss": [2.0, 1.0]},
                      wall_time_s=1.5, provenance={"torch": torch.__version__})


def _updates(optimizer, steps=3):
    params = {"w": torch.linspace(-1, 1, 12)}
    state = optimizer.init(params)
    inputs = torch.linspace(0, 1, 4 * 784).view(4, 784)
    for t in range(steps):
        params, state = optimizer.update({"w": torch.sin(params["w"] * (t + 1))}, state, params, StepContext(t, inputs=inputs))
    return params["w"]


def test_roundtrip_restores_meta_parameters_and_factors_exactly(tmp_path):
    original = _checkpoint(seed=3)
    path = save_checkpoint(original, tmp_path / "a.pt")
    loaded = load_checkpoint(path)
    assert loaded.history == {"trial_loss": [2.0, 1.0]} and loaded.wall_time_s == 1.5
    assert set(loaded.state_dict) == set(original.state_dict)
    for name in ("q", "p", "s", "j"):  # the fixed random factors come back bit for bit
        assert torch.equal(loaded.state_dict[name], original.state_dict[name])
    registry = OptimizerRegistry.default(entry_points=False)
    resolved = registry.resolve("mtl2l")
    bound = loaded.bind(resolved.build(), entry="mtl2l", hparams=resolved.hparams)
    direct = mtl2l().with_meta(mtl2l().init_meta(generator=torch.Generator().manual_seed(3)).eval())
    assert torch.equal(_updates(bound), _updates(direct))
    assert not bound.meta.training and not any(p.requires_grad for p in bound.meta.parameters())


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = save_checkpoint(_checkpoint(), tmp_path / "c.pt")
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(RunError, match="cannot write checkpoint .*No space left on device"):
        save_checkpoint(_checkpoint(seed=9), path)
    assert path.read_bytes() == good  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_temporary_files_left_by_a_killed_writer_are_removed_by_the_next_save(tmp_path):
    import os
    import time

    from l2lbench.store.checkpoint import STALE_TEMP_S

    stale, fresh, other = tmp_path / ".c.pt.abc123.tmp", tmp_path / ".c.pt.def456.tmp", tmp_path / ".d.pt.abc.tmp"
    for temp in (stale, fresh, other):
        temp.write_bytes(b"half a checkpoint")
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    save_checkpoint(_checkpoint(), tmp_path / "c.pt")
    assert not stale.exists()  # left by a kill during a write of c.pt long ago
    assert fresh.exists()  # may be another process writing c.pt right now
    assert other.exists()  # another checkpoint's: not this save's business


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = _checkpoint().payload()
    payload["provenance"] = {"x": _Exploit(str(marker))}
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="is refused: it holds pickled objects"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_corrupt_files_give_clear_errors(tmp_path):
    good = save_checkpoint(_checkpoint(), tmp_path / "good.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint {truncated} (cannot be read|is corrupt)"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_foreign_and_future_files_are_refused(tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointError, match="is not an l2lbench checkpoint"):
        load_checkpoint(weights)
    payload = _checkpoint().payload()
    payload["schema_version"] = SCHEMA_VERSION + 1
    future = tmp_path / "future.pt"
    torch.save(payload, future)
    with pytest.raises(CheckpointError, match=f"schema version {SCHEMA_VERSION + 1}; this l2lbench reads version {SCHEMA_VERSION}"):
        load_checkpoint(future)


def test_checkpoint_for_another_optimizer_or_config_is_refused(tmp_path):
    registry = OptimizerRegistry.default(entry_points=False)
    path = save_checkpoint(_checkpoint("lstm"), tmp_path / "lstm.pt")
    with pytest.raises(CheckpointError, match=r"holds optimizer lstm \{.*\}, not mtl2l \{.*\}"):
        use_checkpoint_file(registry.resolve("mtl2l"), path)
    other = save_checkpoint(_checkpoint("lstm", head="linear"), tmp_path / "linear.pt")
    with pytest.raises(CheckpointError, match='holds optimizer lstm .*"head":"linear".*not lstm .*"head":"authors"'):
        use_checkpoint_file(registry.resolve("lstm"), other)
    with pytest.raises(UsageError, match="'sgd' is not a learned optimizer"):
        use_checkpoint_file(registry.resolve("sgd"), path)


def test_tensors_that_do_not_fit_are_refused(tmp_path):
    checkpoint = _checkpoint("lstm")
    state = dict(checkpoint.state_dict)
    state["weights.0"] = torch.zeros(3, 3)
    bad = save_checkpoint(Checkpoint("lstm", checkpoint.hparams, state), tmp_path / "bad.pt")
    registry = OptimizerRegistry.default(entry_points=False)
    with pytest.raises(CheckpointError, match="does not fit optimizer lstm"):
        use_checkpoint_file(registry.resolve("lstm"), bad)


def test_results_are_keyed_by_checkpoint_digest(tmp_path):
    registry = OptimizerRegistry.default(entry_points=False)
    a = use_checkpoint_file(registry.resolve("lstm"), save_checkpoint(_checkpoint("lstm", seed=1), tmp_path / "a.pt"))
    b = use_checkpoint_file(registry.resolve("lstm"), save_checkpoint(_checkpoint("lstm", seed=2), tmp_path / "b.pt"))
    assert a.hash != b.hash and a.hash != registry.resolve("lstm").hash
    assert a.config()["checkpoint"]["path"].endswith("a.pt")


def test_cache_meta_trains_once_and_reuses(tmp_path, monkeypatch):
    import dataclasses

    from l2lbench.execute import metatrained as cache

    calls = []
    real = cache.meta_train
    monkeypatch.setattr(cache, "meta_train", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = MetaTrainingSpec.from_config(
        {"tasks": [{"dataset": {"kind": "synthetic", "n_train": 64, "n_test": 32}, "learner": {"kind": "mlp", "hidden": [4]}}],
         "steps": 4, "batch_size": 8, "trials": 1}
    )
    registry = OptimizerRegistry.default(entry_points=False)
    resolved = dataclasses.replace(registry.resolve("lstm"), meta_training=spec)
    kwargs = dict(results_dir=tmp_path / "results", data_dir=tmp_path / "data", device=CPU, progress=False)
    first = ensure_meta_trained(resolved, **kwargs)
    second = ensure_meta_trained(resolved, **kwargs)
    assert calls == [1] and first.checkpoint == second.checkpoint
    assert first.checkpoint.parent == tmp_path / "results" / "checkpoints"
    optimizer, info = build_for_meta_test(first, CPU)
    assert info["horizon"] == 4 and info["trials"] == 1 and info["datasets"] == ["synthetic-n_train64-n_test32"]
    assert info["wall_time_s"] > 0
    assert info["estimator"] == "tbptt" and info["learner_steps"] == 4  # 1 trial x 4 steps
    first.checkpoint.write_bytes(b"corrupt")  # a damaged cache entry is trained again
    ensure_meta_trained(resolved, **kwargs)
    assert calls == [1, 1]


def test_learned_optimizer_without_meta_training_or_checkpoint(tmp_path):
    registry = OptimizerRegistry.default(entry_points=False)
    with pytest.raises(UsageError, match="no meta-training config and no checkpoint"):
        ensure_meta_trained(registry.resolve("lstm"), results_dir=tmp_path, data_dir=tmp_path, device=CPU)
    with pytest.raises(UsageError, match="has no meta-parameters"):
        build_for_meta_test(registry.resolve("lstm"), CPU)


def test_a_checkpoint_records_every_learner_step_its_meta_training_took(tmp_path):
    """PES's cost is every particle's steps, not the trials' alone."""
    import dataclasses

    spec = MetaTrainingSpec.from_config(
        {"tasks": [{"dataset": {"kind": "synthetic", "n_train": 64, "n_test": 32}, "learner": {"kind": "mlp", "hidden": [4]}}],
         "steps": 4, "unroll": 2, "batch_size": 8, "trials": 2, "estimator": "pes", "particles": 3}
    )
    registry = OptimizerRegistry.default(entry_points=False)
    resolved = dataclasses.replace(registry.resolve("lstm"), meta_training=spec)
    trained = ensure_meta_trained(resolved, results_dir=tmp_path / "results", data_dir=tmp_path / "data", device=CPU,
                                  progress=False)
    _, info = build_for_meta_test(trained, CPU)
    # 2 trials x 4 learner steps x 2 x 3 particles
    assert info["estimator"] == "pes" and info["learner_steps"] == 2 * 4 * 6
