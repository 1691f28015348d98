"""The README's plug-in example is real: extracted from README.md and run end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from l2lbench.cli import main
from l2lbench.store import ResultsStore
from l2lbench.testing import CHECKS, run_check

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return next(b for b in blocks if b.startswith(marker))


def test_readme_opens_with_the_two_commands():
    lines = README.read_text().splitlines()
    start = lines.index("```bash")
    assert lines[start + 1].startswith("pip install . && l2lbench run --suite smoke")
    assert lines[start + 2] == "pip install -e '.[test]' && pytest"
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && pytest" in ci


@pytest.fixture
def signum(tmp_path, monkeypatch):
    path = tmp_path / "signum.py"
    path.write_text(_block("# signum.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


def test_readme_plugin_runs_in_a_suite(signum, tiny_suite, tmp_path, capsys):
    results = str(tmp_path / "results")
    assert main(["run", "--suite", tiny_suite(), "--results", results, "--plugin", str(signum)]) == 0
    runs = ResultsStore(results).runs()
    assert {r.optimizer_name for r in runs} == {"sgd", "adam", "signum"}
    assert all(r.status == "ok" for r in runs)


@pytest.mark.parametrize("check", list(CHECKS))
def test_readme_plugin_passes_conformance(signum, check):
    import importlib

    module = importlib.import_module("signum")
    run_check(check, module.Signum, lr=0.01)
