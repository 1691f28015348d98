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


def test_readme_checkpoint_example_trains_a_model(tmp_path, monkeypatch):
    """The five-line "use a meta-trained optimiser on your own model" example, as written."""
    import torch

    from l2lbench.learned.checkpoint import Checkpoint, save_checkpoint
    from l2lbench.optimizers.lstm import lstm

    module = lstm().init_meta(generator=torch.Generator().manual_seed(0))
    save_checkpoint(Checkpoint("lstm", {"hidden": 20, "layers": 2, "preprocess_p": 10.0, "output_scale": 0.1,
                                        "head": "authors", "init_scheme": "authors"}, module.state_dict()), tmp_path / "lstm.pt")
    monkeypatch.chdir(tmp_path)
    generator = torch.Generator().manual_seed(0)
    loader = [(torch.randn(8, 1, 28, 28, generator=generator), torch.randint(10, (8,), generator=generator))] * 3
    namespace = {"loader": loader}
    exec(_block("import torch, l2lbench"), namespace)
    opt, schedule = namespace["opt"], namespace["schedule"]
    assert opt.steps_taken == 3
    assert type(opt.functional).__name__ == "LSTMOptimizer"
    # Cosine annealing over the 3 batches: lr = initial (1 + cos(pi t / 3)) / 2, 0 after the last.
    assert [g["initial_lr"] for g in opt.param_groups] == [1.0, 0.5]
    assert schedule.get_last_lr() == pytest.approx([0.0, 0.0], abs=1e-12)
