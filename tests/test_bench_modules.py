"""``l2lbench.bench``'s parts on their own: its figures, and a command line built without torch."""

from __future__ import annotations

import subprocess
import sys

from l2lbench.bench.figures import difference, ratio, rounded


def test_figures_by_hand():
    assert rounded(2.0 / 3.0) == 0.667 and rounded(None) is None
    assert difference(3.5, 1.25) == 2.25
    assert difference(None, 1.0) is None and difference(1.0, None) is None
    # Minima 1 and 2, medians 3 and 4; per repeat 1/2, 3/4, 5/6.
    assert ratio([1.0, 3.0, 5.0], [2.0, 4.0, 6.0]) == {"of_min": 0.5, "of_median": 0.75,
                                                        "per_repeat": [0.5, 0.75, 0.8333]}


def test_bench_arguments_import_no_torch():
    code = (
        "import argparse, sys\n"
        "import l2lbench.bench, l2lbench.cli.bench as c\n"
        "c.add_arguments(argparse.ArgumentParser())\n"
        "assert 'torch' not in sys.modules, 'the bench command line imports torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
