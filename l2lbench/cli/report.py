"""``l2lbench report``: leaderboards, summary, paired tests and plots from the results store.

The command reads only the results store. Its arguments are added by
:func:`add_arguments` and it runs through :func:`run`; pandas, scipy and matplotlib are
imported inside :func:`run`, so building the command line stays fast.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> args = parser.parse_args(["--format", "json", "--no-plots"])
    >>> args.format, args.results, args.reference
    ('json', 'results', 'adam')
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from l2lbench.cli.argtypes import positive_int
from l2lbench.errors import UsageError

if TYPE_CHECKING:
    from l2lbench.store.runs import RunRecord
    from l2lbench.spec.suite import Suite

#: Report formats; the first is the default.
FORMATS = ("markdown", "github", "latex", "html", "csv", "json")
DEFAULT_RESULTS = "results"
DEFAULT_REFERENCE = "adam"
#: The file each format writes under the output folder.
REPORT_FILES = {"markdown": "report.md", "github": "report.md", "latex": "report.tex", "html": "report.html",
                "csv": "leaderboard.csv", "json": "report.json"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``report`` options to ``parser``."""
    parser.add_argument("--suite", metavar="NAME",
                        help="only this suite's tasks and optimisers (a built-in name or a .toml file); "
                             "also lists the suite's runs that are missing")
    parser.add_argument("--ruleset", choices=("fixed", "tuned"),
                        help="with --suite: the ruleset the suite was run with, if not its own (run --ruleset)")
    parser.add_argument("--tuning-trials", type=positive_int, metavar="N",
                        help="with --suite: the tuning trials it was run with, if not its own (run --tuning-trials)")
    parser.add_argument("--format", choices=FORMATS, default=FORMATS[0],
                        help="output format (default: markdown); csv and json keep full precision")
    parser.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR",
                        help=f"results folder to read (default: ./{DEFAULT_RESULTS})")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the report files and plots/ (default: the results folder)")
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, metavar="NAME",
                        help=f"optimiser the speed-ups are measured against (default: {DEFAULT_REFERENCE})")
    parser.add_argument("--all-versions", action="store_true",
                        help="include runs of older optimiser code or benchmark protocol (labelled by code "
                             "fingerprint; by default only the current code's runs are reported)")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                        help="optimiser plug-ins whose stored runs are reported: their code tells which runs "
                             "are current (repeatable)")
    parser.add_argument("--log-y", action="store_true",
                        help="log-scale loss axes in every plot (default: where the curves span more than a decade)")
    parser.add_argument("--no-plots", action="store_true", help="write no plots")


def read_runs(results: Path) -> list["RunRecord"]:
    """Every run in the results store at ``results``; never creates a store."""
    from l2lbench.store.runs import DB_FILENAME, ResultsStore

    empty = f"no runs stored in {results}; run `l2lbench run` first"
    # ResultsStore creates a missing database; a report must not leave one behind.
    if not (results / DB_FILENAME).is_file():
        raise UsageError(empty)
    with ResultsStore.read_only(results) as store:  # a report writes nothing there (--out may be elsewhere)
        records = store.runs()
    if not records:
        raise UsageError(empty)
    return records


def restrict_to_suite(records: Sequence["RunRecord"], suite: "Suite") -> list["RunRecord"]:
    """The runs of the suite's tasks (by hash), of every optimiser: plug-ins run beside the
    suite (``run --plugin``) belong to its report too."""
    tasks = {t.hash for t in suite.tasks}
    return [r for r in records if r.task_hash in tasks]


def current_runs(records: Sequence["RunRecord"], registry: Any) -> tuple[list["RunRecord"], list[str]]:
    """The runs of each optimiser's current code and protocol, and notes on what was left out.

    An optimiser's current code is that of its entry in ``registry`` (built-ins, installed
    entry points, ``--plugin``); for an entry not registered here (a plug-in file not
    given) it is the newest code stored for it, and a note says so.
    """
    from l2lbench.store.codeid import PROTOCOL_VERSION, key_part
    from l2lbench.errors import L2LBenchError

    def entry(record: "RunRecord") -> str:
        return record.optimizer_config.get("entry", record.optimizer_name)

    def stored(record: "RunRecord") -> dict[str, Any]:
        code = record.optimizer_config.get("code")
        # A run stored before keys had code has neither: "unknown", never current.
        return key_part(code if isinstance(code, dict) else {}, record.optimizer_config.get("protocol", "unknown"))

    current: dict[str, Any] = {}
    notes = []
    for name in sorted({entry(r) for r in records}):
        try:
            current[name] = key_part(registry.get(name).code)
        except L2LBenchError:  # not registered here: its newest stored code of this protocol
            candidates = [r for r in records if entry(r) == name and stored(r)["protocol"] == PROTOCOL_VERSION]
            if candidates:
                current[name] = stored(max(candidates, key=lambda r: r.created_at))
                notes.append(f"Optimizer {name!r} is not registered here (pass its --plugin to check its code): "
                             "its runs of the newest stored code are reported.")
    kept, left_out = [], {}
    for record in records:
        if stored(record) == current.get(entry(record)):
            kept.append(record)
        else:
            left_out[record.optimizer_name] = left_out.get(record.optimizer_name, 0) + 1
    if left_out:
        which = ", ".join(f"{name} {n}" for name, n in sorted(left_out.items()))
        notes.append(f"Left out {sum(left_out.values())} stored runs of older optimiser code or benchmark protocol "
                     f"({which}); --all-versions includes them, labelled by code fingerprint.")
    return kept, notes


def _reference(groups: Mapping[str, Sequence[Any]], records: Sequence["RunRecord"], name: str | None) -> str | None:
    """The reference optimiser's label in the report, from its label or its stored name."""
    from l2lbench.report.grouping import optimizer_label

    labels = sorted({g.optimizer for task_groups in groups.values() for g in task_groups})
    if name is None or name in labels:
        return name
    named = sorted({optimizer_label(r) for r in records if r.optimizer_name == name} & set(labels))
    if len(named) == 1:
        return named[0]
    if name == DEFAULT_REFERENCE and not named:
        # The default reference may simply not have run: the report then has no speed-ups.
        return None
    raise UsageError(f"unknown reference optimizer {name!r}; expected one of the reported optimizers: {', '.join(labels)}")


def _data_uri(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {str(path)!r}: {exc.strerror or exc} (expected a writable --out folder)") from None


def run(args: argparse.Namespace) -> int:
    """Print the report to stdout, write it (and its plots) under the output folder; returns 0.

    Raises:
        UsageError: unknown format or suite, empty store, unknown reference, unwritable output.
    """
    from l2lbench.report.grouping import group_runs
    from l2lbench.report.model import build_report, machine_tables
    from l2lbench.report.render import render
    from l2lbench.report.render.csv import to_csv
    from l2lbench.spec.suite import load_suite

    fmt = getattr(args, "format", FORMATS[0])
    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    results = Path(getattr(args, "results", DEFAULT_RESULTS))
    out = Path(args.out) if getattr(args, "out", None) else results
    from l2lbench.cli import registry_for

    registry = registry_for(getattr(args, "plugin", []) or [])  # a broken --plugin stops here, exit 2
    records = read_runs(results)
    suite = None
    if getattr(args, "suite", None):
        suite = load_suite(args.suite).with_overrides(ruleset=getattr(args, "ruleset", None),
                                                      tuning_trials=getattr(args, "tuning_trials", None))
        records = restrict_to_suite(records, suite)
        if not records:
            raise UsageError(f"no runs of suite {suite.name!r} stored in {results}; "
                             f"run `l2lbench run --suite {args.suite}` first")
    notes: list[str] = []
    if not getattr(args, "all_versions", False):
        records, notes = current_runs(records, registry)
        if not records:
            raise UsageError(f"no runs of the current code stored in {results} ({notes[-1]})")
    from l2lbench.report import tuning as report_tuning

    plans = report_tuning.plans_for(suite, registry, records) if suite is not None and suite.ruleset == "tuned" else []
    records, tuning_notes = report_tuning.final_records(records, plans)
    notes += tuning_notes
    for note in notes:
        print(f"l2lbench: note: {note}", file=sys.stderr)
    if not records:
        raise UsageError(f"no final runs stored in {results} (only tuning runs); run `l2lbench run` to finish them")
    reference = _reference(group_runs(records), records, getattr(args, "reference", DEFAULT_REFERENCE))
    renamed = {p.base.name: p.tuned_name for p in plans}
    report = build_report(records, results=str(results), reference=reference, suite=suite, renamed=renamed)
    if plans:
        report.tuning = report_tuning.table(plans, suite.tuning)
    report.notes += notes
    if reference is None:
        report.notes.append(f"No speed-ups: the reference optimiser {DEFAULT_REFERENCE!r} has no runs here "
                            "(choose one with --reference).")

    images: dict[str, str] = {}
    written: list[Path] = []
    if not getattr(args, "no_plots", False):
        from l2lbench.report import plots

        try:
            pngs = plots.write_plots(report.groups, report.leaderboard, out / "plots", log_y=True if getattr(args, "log_y", False) else None)
            pngs.update(plots.write_extra_plots(plans, report.time_to_target, out / "plots"))
        except OSError as exc:
            raise UsageError(f"cannot write plots under {str(out / 'plots')!r}: {exc.strerror or exc}") from None
        images = {key: path.relative_to(out).as_posix() for key, path in pngs.items()}
        written += [p for png in pngs.values() for p in (png, png.with_suffix(".svg"))]

    if fmt == "html":  # one file to mail: the figures go inside it
        images = {key: _data_uri(out / path) for key, path in images.items()}
    text = render(report, fmt, images)
    sys.stdout.write(text)
    report_path = out / REPORT_FILES[fmt]
    _write(report_path, text)
    if fmt == "csv":
        # The leaderboard is the csv report; the other tables go beside it.
        for name, frame in machine_tables(report).items():
            if name != "leaderboard":
                _write(out / f"{name}.csv", to_csv(frame))
    # stdout carries only the report (csv and json stay parseable); what was written goes to stderr.
    plots_note = f" and {len(written)} plot files under {out / 'plots'}" if written else ""
    print(f"l2lbench: wrote {report_path}{plots_note}", file=sys.stderr)
    return 0
