"""Results you can trust: a run's key names the code that produced it.

The literal hashes below were computed outside l2lbench (``printf '%s' '<json>' |
sha256sum``), so a change of the key encoding fails here instead of silently orphaning,
or worse re-using, every stored result.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import textwrap

import pytest

from l2lbench.store import codeid
from l2lbench.cli import main
from l2lbench.store.codeid import source_fingerprint
from l2lbench.spec.hashing import canonical_json, content_hash
from l2lbench.plugin.registry import OptimizerRegistry
from l2lbench.spec.optimizer import OptimizerSpec, config_hash
from l2lbench.store.runs import ResultsStore, RunRecord
from l2lbench.spec.task import TaskSpec

# --------------------------------------------------------------------------- pinned encodings


def test_content_hash_is_sha256_of_canonical_json():
    assert canonical_json({"a": 1}) == '{"a":1}'
    assert content_hash({"a": 1}) == "015abd7f5cc57a2d"


def test_task_key_is_pinned():
    task = TaskSpec.from_config({"dataset": "mnist"})
    assert canonical_json(task.config()) == (
        '{"batch_size":128,"dataset":{"kind":"mnist","mean":0.1307,"std":0.3081},"eval_every":10,'
        '"eval_examples":null,"kind":"task","learner":{"activation":"relu","hidden":[32],"kind":"mlp"},"steps":1000}'
    )
    assert task.hash == "2dd51e6d017edc79"


def test_optimizer_key_is_pinned():
    code = {"fingerprint": "0123456789abcdef", "distribution": None, "protocol": 1}
    assert config_hash("adam", {"lr": 0.01, "betas": (0.9, 0.999)}, code) == "b46f828dc615839d"
    assert config_hash("lstm", {"hidden": 20}, code, meta_training="00ff00ff00ff00ff") == "151cb8dfaa1ac668"


def test_code_fingerprint_is_pinned():
    assert source_fingerprint("x = 1\n") == "8ff436def1451285"
    # Docstrings, comments, blank lines and layout are not code.
    assert source_fingerprint('"""Module doc."""\n\n\ndef f():\n    """Doc."""\n    return (1)  # one\n') == "8795b1c438f59538"


# --------------------------------------------------------------------------- what the fingerprint sees

RULE = textwrap.dedent('''
    """Sign descent (tests only)."""
    import torch


    class Sign:
        """Plain sign descent."""

        batchable = True

        def __init__(self, lr: float = 0.01):
            self.lr = lr

        def init(self, params, *, generator=None):
            return ()

        def update(self, grads, state, params, context):
            return {k: p - self.lr * torch.sign(grads[k]) for k, p in params.items()}, state


    OPTIMIZERS = {"sign": Sign}
''')


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace('"""Plain sign descent."""', '"""Sign descent, as in signSGD."""'),
        lambda s: s.replace("import torch\n", "import torch  # the only dependency\n\n\n"),
        lambda s: s.replace("return ()", "return (\n            )"),
        lambda s: s.replace("    batchable = True\n", "    # batched with vmap\n    batchable = True\n"),
    ],
)
def test_comment_docstring_and_layout_edits_keep_the_fingerprint(edit):
    edited = edit(RULE)
    assert edited != RULE
    assert source_fingerprint(edited) == source_fingerprint(RULE)


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace("torch.sign(grads[k])", "torch.sign(grads[k]) * 0.5"),
        lambda s: s.replace("lr: float = 0.01", "lr: float = 0.02"),
        lambda s: s.replace("batchable = True", "batchable = False"),
        lambda s: s.replace("p - self.lr", "p + self.lr"),
        lambda s: s.replace('"sign"', '"sgn"'),
    ],
)
def test_code_edits_change_the_fingerprint(edit):
    edited = edit(RULE)
    assert edited != RULE
    assert source_fingerprint(edited) != source_fingerprint(RULE)


def test_every_optimizer_key_covers_code_and_protocol(tmp_path, monkeypatch):
    plugin = tmp_path / "sign.py"
    plugin.write_text(RULE)
    key = OptimizerRegistry.default([str(plugin)], entry_points=False).resolve("sign")
    assert key.config()["code"]["fingerprint"] == source_fingerprint(RULE)
    assert key.config()["protocol"] == codeid.PROTOCOL_VERSION
    # Built-ins are keyed by their module's source.
    adam = OptimizerRegistry.default(entry_points=False).resolve("adam")
    assert adam.config()["code"]["module"] == "l2lbench.optimizers.adam"
    assert adam.config()["code"]["fingerprint"] is not None
    before = adam.hash
    monkeypatch.setattr(codeid, "PROTOCOL_VERSION", codeid.PROTOCOL_VERSION + 1)
    assert OptimizerRegistry.default(entry_points=False).resolve("adam").hash != before


# --------------------------------------------------------------------------- end to end

SUITE = """
seeds = 2
optimizers = ["sgd", {{ entry = "adam", lr = 0.001 }}{extra}]

[defaults]
steps = 8
batch_size = 16
eval_every = 4

[[tasks]]
dataset = {{ kind = "synthetic", n_train = 128, n_test = 64, size = 8 }}
learner = {{ kind = "mlp", hidden = [8] }}
"""


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(results, name):
    return sorted((r for r in ResultsStore(results).runs() if r.optimizer_name == name), key=lambda r: r.seed)


def test_a_changed_update_rule_is_recomputed_and_reported_a_comment_is_not(tmp_path, capsys):
    plugin, suite, results = tmp_path / "sign.py", tmp_path / "s.toml", tmp_path / "r"
    plugin.write_text(RULE)
    suite.write_text(SUITE.format(extra=""))
    run = ("run", "--suite", suite, "--results", results, "--plugin", plugin)
    assert _cli(capsys, *run)[0] == 0
    first = [r.test_loss[-1] for r in _rows(results, "sign")]

    plugin.write_text(RULE.replace("torch.sign(grads[k])", "torch.sign(grads[k]) * 0.5"))  # same name, same lr
    code, out, err = _cli(capsys, *run)
    assert code == 0, err
    assert "4 runs already stored (skipped), 2 to run" in out  # sgd and adam stay, sign is recomputed
    rows = _rows(results, "sign")
    assert len(rows) == 4  # the old rows stay in the store
    fingerprints = {r.optimizer_config["code"]["fingerprint"] for r in rows}
    assert len(fingerprints) == 2
    new = [r.test_loss[-1] for r in rows if r.optimizer_config["code"]["fingerprint"] == source_fingerprint(plugin.read_text())]
    assert len(new) == 2 and new != first

    code, out, err = _cli(capsys, "report", "--suite", suite, "--results", results, "--plugin", plugin,
                          "--format", "json", "--no-plots")
    assert code == 0, err
    report = json.loads(out)
    sign = [row for row in report["leaderboard"] if row["optimizer"] == "sign"]
    assert len(sign) == 1 and sign[0]["final_loss"] == pytest.approx(sum(new) / 2)
    assert sign[0]["code"] == source_fingerprint(plugin.read_text())
    assert "Left out 2 stored runs of older optimiser code or benchmark protocol (sign 2)" in err
    assert any("Left out 2 stored runs" in note for note in report["notes"])

    # --all-versions: both codes, never merged into one mean, labelled by fingerprint.
    code, out, _ = _cli(capsys, "report", "--suite", suite, "--results", results, "--plugin", plugin,
                        "--format", "json", "--no-plots", "--all-versions")
    rows = [row for row in json.loads(out)["leaderboard"] if row["optimizer"].startswith("sign")]
    assert sorted(row["optimizer"] for row in rows) == sorted(f"sign [code {f[:8]}]" for f in fingerprints)
    assert sorted(row["final_loss"] for row in rows) == pytest.approx(sorted([sum(first) / 2, sum(new) / 2]))

    # A comment- and docstring-only edit recomputes nothing.
    plugin.write_text(plugin.read_text().replace('"""Plain sign descent."""', '"""Halved sign descent."""\n    # why'))
    code, out, _ = _cli(capsys, *run)
    assert code == 0 and "6 runs already stored (skipped), 0 to run" in out


def test_a_protocol_bump_recomputes_every_run_and_meta_training(tmp_path, capsys, monkeypatch):
    suite, results = tmp_path / "s.toml", tmp_path / "r"
    suite.write_text(SUITE.format(extra=', "lstm"') + textwrap.dedent("""
        [meta_training]
        tasks = [{ dataset = { kind = "synthetic", n_train = 128, n_test = 64, size = 8 }, learner = { kind = "mlp", hidden = [8] } }]
        steps = 6
        batch_size = 16
        trials = 2
        unroll = 3
    """))
    assert _cli(capsys, "run", "--suite", suite, "--results", results)[0] == 0
    monkeypatch.setattr(codeid, "PROTOCOL_VERSION", codeid.PROTOCOL_VERSION + 1)
    code, out, _ = _cli(capsys, "run", "--suite", suite, "--results", results)
    assert code == 0 and "0 runs already stored (skipped), 6 to run" in out
    assert "lstm: meta-training on" in out  # its checkpoint is keyed by the protocol too
    assert len(list((results / "checkpoints").glob("lstm-*.pt"))) == 2


def test_rerun_recomputes_and_replaces_what_the_selection_covers(tmp_path, capsys):
    suite, results = tmp_path / "s.toml", tmp_path / "r"
    suite.write_text(SUITE.format(extra=""))
    assert _cli(capsys, "run", "--suite", suite, "--results", results)[0] == 0
    db = sqlite3.connect(results / "l2lbench.sqlite")
    db.execute("UPDATE runs SET created_at = 'old', wall_time_s = -1")
    db.commit()
    code, out, _ = _cli(capsys, "run", "--suite", suite, "--results", results, "--rerun", "--optimizers", "sgd")
    assert code == 0 and "2 to recompute (--rerun)" in out
    rows = {(r.optimizer_name, r.seed): r for r in ResultsStore(results).runs()}
    assert len(rows) == 4
    assert {rows["sgd", s].created_at != "old" and rows["sgd", s].wall_time_s > 0 for s in (0, 1)} == {True}
    assert {rows["adam-lr0.001", s].created_at for s in (0, 1)} == {"old"}  # not selected: untouched


def test_a_failed_rerun_never_replaces_a_finished_run(tmp_path):
    def record(status, loss):
        return RunRecord(task_hash="t" * 16, optimizer_hash="o" * 16, seed=0, task_name="t", optimizer_name="o",
                         task_config={}, optimizer_config={}, status=status, train_loss=[loss], eval_steps=[0],
                         test_loss=[loss], test_accuracy=[0.5], error="boom" if status == "failed" else None)

    with ResultsStore(tmp_path) as store:
        store.put([record("ok", 1.0)])
        assert store.put([record("ok", 2.0)]) == 0  # without replace the first finished result stays
        assert store.put([record("failed", 0.0)], replace=True) == 0
        assert store.put([record("ok", 3.0)], replace=True) == 1
        (stored,) = store.runs()
        assert stored.status == "ok" and stored.test_loss == [3.0]


def test_report_rows_say_what_was_run(tmp_path, capsys):
    plugin, suite, results = tmp_path / "sign.py", tmp_path / "s.toml", tmp_path / "r"
    plugin.write_text(RULE)
    suite.write_text(SUITE.format(extra=""))
    assert _cli(capsys, "run", "--suite", suite, "--results", results, "--plugin", plugin)[0] == 0
    code, out, err = _cli(capsys, "report", "--suite", suite, "--results", results, "--no-plots")
    assert code == 0, err
    # The plug-in's runs belong to the suite's report even without --plugin; its code is
    # then taken to be the newest stored, and the report says so.
    assert "| sign " in out and "Optimizer 'sign' is not registered here" in out
    assert "| adam(lr=0.001) " in out and "| sgd " in out
    header = next(line for line in out.splitlines() if line.startswith("|") and "optimizer" in line)
    assert "time/run (s)" in header and "time/step (ms)" in header
    code, out, _ = _cli(capsys, "report", "--suite", suite, "--results", results, "--no-plots", "--format", "csv")
    rows = {row["optimizer"]: row for row in csv.DictReader(io.StringIO(out))}
    assert json.loads(rows["adam(lr=0.001)"]["hyperparameters"]) == {
        "lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-08, "weight_decay": 0.0, "amsgrad": False
    }
    stored = _rows(results, "sign")
    per_run = sum(r.wall_time_s for r in stored) / 2
    assert float(rows["sign"]["time_per_run_s"]) == pytest.approx(per_run)
    assert float(rows["sign"]["time_per_step_s"]) == pytest.approx(per_run / 8)
    assert rows["sign"]["code"] == source_fingerprint(RULE) and rows["sign"]["protocol"] == "2"
