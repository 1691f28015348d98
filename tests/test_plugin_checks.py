"""run checks plug-ins against the fast conformance checks before anything runs."""

from __future__ import annotations

import textwrap

from l2lbench.cli import main
from l2lbench.store.runs import ResultsStore

IN_PLACE = """
class InPlace:
    def __init__(self, lr: float = 0.1):
        self.lr = lr

    def init(self, params, *, generator=None):
        return {}

    def update(self, grads, state, params, context):
        for k in params:
            params[k].sub_(self.lr * grads[k])  # changes its input: plausible numbers, wrong harness
        return dict(params), state


OPTIMIZERS = {"inplace": InPlace}
"""


def test_a_plugin_that_changes_its_inputs_is_refused_unless_no_check(tmp_path, capsys):
    plugin = tmp_path / "inplace.py"
    plugin.write_text(textwrap.dedent(IN_PLACE))
    results = tmp_path / "r"
    argv = ["run", "--suite", "smoke", "--plugin", str(plugin), "--optimizers", "inplace,sgd", "--seeds", "1",
            "--steps", "3", "--results", str(results)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"l2lbench: error: optimizer 'inplace' (plug-in {plugin}) fails the conformance check out_of_place: "
                   "update modified params entry layer.weight in place (fix it, or run with --no-check)")
    assert not results.exists()  # nothing ran, nothing was written
    assert main([*argv, "--no-check"]) == 0
    assert {r.optimizer_name for r in ResultsStore(results).runs()} == {"inplace", "sgd"}


def test_faults_that_raise_are_left_to_their_runs_a_wrong_shape_is_refused(tmp_path, capsys):
    """Checks refuse what would pass silently; a plug-in that raises, exits or hangs is not
    refused here (its runs fail with the reason, as without the checks)."""
    from pathlib import Path

    plugins = str(Path(__file__).with_name("plugins.py"))
    results = tmp_path / "r"
    base = ["run", "--suite", "smoke", "--plugin", plugins, "--seeds", "1", "--steps", "3", "--results", str(results),
            "--tasks", "synthetic-mlp*", "--run-timeout", "5"]
    assert main([*base, "--optimizers", "wrong-shape,sgd"]) == 2
    assert "optimizer 'wrong-shape' (plug-in " in capsys.readouterr().err
    assert main([*base, "--optimizers", "raises,exits,sgd"]) == 1
    runs = {r.optimizer_name: r for r in ResultsStore(results).runs()}
    assert runs["raises"].status == runs["exits"].status == "failed" and runs["sgd"].status == "ok"
