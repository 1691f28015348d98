"""The README's plug-in example is real: extracted from README.md and run end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from l2lbench.cli import main
from l2lbench.store.runs import ResultsStore
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

    from l2lbench.store.checkpoint import Checkpoint, save_checkpoint
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


def test_readme_dataset_plugin_runs_in_a_suite(tmp_path, monkeypatch, capsys):
    """The README's third-party dataset, installed as its entry point says, in a suite."""
    package = tmp_path / "acme_data"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "stripes.py").write_text(_block("# acme_data/stripes.py"))
    info = tmp_path / "acme_data-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-data\nVersion: 1.0\n")
    import tomllib

    block = next(b for b in re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S) if "l2lbench.datasets" in b)
    points = tomllib.loads(block)["project"]["entry-points"]["l2lbench.datasets"]
    (info / "entry_points.txt").write_text("[l2lbench.datasets]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = tmp_path / "s.toml"
    suite.write_text('seeds = 1\noptimizers = ["sgd"]\n[defaults]\nsteps = 3\nbatch_size = 4\neval_every = 3\n'
                     '[[tasks]]\ndataset = { kind = "stripes", n_train = 600 }\n')
    assert main(["run", "--suite", str(suite), "--results", str(tmp_path / "r"), "--workers", "1"]) == 0
    assert "done: 1 ok, 0 diverged, 0 failed" in capsys.readouterr().out
    (run,) = ResultsStore(tmp_path / "r").runs()
    assert run.task_name == "stripes-n_train600-mlp784x32x10-relu-3steps-bs4-eval3"
