"""The ``l2lbench`` command line.

Exit codes: 0 success; 2 bad usage or input (one line naming the bad value and the valid
choices); 1 a failure while running (e.g. some runs failed: they are stored as failed
and the rest of the suite still ran); 128 + the signal's number when stopped by Ctrl-C
(130), SIGTERM (143) or SIGHUP (129), with the runs finished before it stored. ``--debug``
shows tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from l2lbench.errors import L2LBenchError, RunError, Stopped, UsageError

DEFAULT_RESULTS = "results"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # main() prefixes "l2lbench: error: "; a subcommand adds its own name ("run: ...").
        command = self.prog.partition(" ")[2]
        raise UsageError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="l2lbench", description="Benchmark learned and hand-designed optimisers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"l2lbench {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_common(p: argparse.ArgumentParser, *, results: bool = False, data: bool = False) -> None:
        p.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                       help="load optimiser plug-ins from a file or module (repeatable)")
        if results:
            p.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR", help="results folder (default: ./results)")
        if data:
            p.add_argument("--data-dir", default=None, metavar="DIR",
                           help="dataset folder (default: $L2LBENCH_DATA or the user cache folder)")

    from l2lbench.cli import run as run_command

    run = commands.add_parser("run", help="run a suite: every task x optimiser x seed not yet stored")
    run_command.add_arguments(run)
    add_common(run, results=True, data=True)

    from l2lbench.cli import meta_train as meta_train_command
    from l2lbench.cli import report as report_command

    meta_train = commands.add_parser("meta-train", help="meta-train a learned optimiser into a checkpoint")
    meta_train_command.add_arguments(meta_train)
    add_common(meta_train, results=True, data=True)

    report = commands.add_parser("report", help="leaderboards, statistics and plots from the results store")
    report_command.add_arguments(report)

    from l2lbench.cli import bench as bench_command

    bench = commands.add_parser("bench", help="time optimisers per learner step against a bare torch loop")
    bench_command.add_arguments(bench)
    add_common(bench)

    lister = commands.add_parser("list", help="list optimizers, tasks or suites")
    lister.add_argument("what", choices=["optimizers", "tasks", "suites"])
    lister.add_argument("--format", choices=["text", "json"], default="text")
    lister.add_argument("--all", action="store_true",
                        help="optimizers: also every torch.optim class (and pytorch_optimizer's, when installed), "
                             "usable by name without a file (torch:NAdam)")
    add_common(lister)

    data = commands.add_parser("data", help="manage datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    importer = data_commands.add_parser("import", help="import original archives from a local folder (offline machines)")
    importer.add_argument("source", metavar="DIR", help="folder laid out as torchvision dataset roots, e.g. DIR/MNIST/raw/*.gz")
    importer.add_argument("--data-dir", default=None, metavar="DIR",
                          help="where the verified copies go and where run finds them (default: $L2LBENCH_DATA, "
                               "else the user cache folder)")
    return parser


def _data_dir(value: str | None) -> Path:
    from l2lbench.tasks.datasets import default_data_dir

    return Path(value).expanduser() if value else default_data_dir()


def _version() -> str:
    from l2lbench.store.provenance import package_version

    return package_version()


def registry_for(plugins: list[str]):
    """The optimiser registry with the ``--plugin`` modules: one that cannot be used stops
    the command (exit 2) before anything runs; unused entry points only warn."""
    from l2lbench.plugin.registry import OptimizerRegistry

    registry = OptimizerRegistry.default(plugins)
    for note in registry.notes:
        print(f"l2lbench: note: {note}", file=sys.stderr)
    for problem in registry.problems:
        print(f"l2lbench: warning: {problem}", file=sys.stderr)
    return registry


def cmd_run(args: argparse.Namespace) -> int:
    from l2lbench.cli import run as run_command

    return run_command.run(args, registry=registry_for(args.plugin), data_dir=_data_dir(args.data_dir))


def cmd_list(args: argparse.Namespace) -> int:
    from l2lbench.spec.suite import builtin_suites, load_suite

    if args.what == "optimizers":
        registry = registry_for(args.plugin)
        rows = []
        for entry in registry.entries():
            try:
                description = entry.description  # imports an entry point's module
            except L2LBenchError as exc:  # an installed package nobody asked for: a warning
                print(f"l2lbench: warning: {exc}", file=sys.stderr)
                description = "(cannot be imported: see the warning)"
            rows.append({"name": entry.name, "source": entry.source, "description": description})
        if args.all:
            rows += _library_rows()
    elif args.what == "suites":
        rows = []
        for name in builtin_suites():
            suite = load_suite(name)
            rows.append({"name": name, "tasks": len(suite.tasks), "optimizers": len(suite.optimizers),
                         "seeds": suite.seeds, "description": suite.description})
    else:
        rows, seen = [], set()
        for name in builtin_suites():
            for task in load_suite(name).tasks:
                if task.hash not in seen:
                    seen.add(task.hash)
                    rows.append({"name": task.name, "hash": task.hash, "suite": name, "steps": task.steps})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        from tabulate import tabulate

        print(tabulate(rows, headers="keys", tablefmt="simple", maxcolwidths=[None] * (len(rows[0]) - 1) + [70] if rows else None))
    return 0


def _library_rows() -> list[dict[str, str]]:
    """Every optimiser class of the installed libraries, as `list optimizers --all` rows."""
    from l2lbench.plugin.library import LIBRARIES, classes

    rows = []
    for prefix, (module, distribution) in LIBRARIES.items():
        try:
            names = classes(prefix)
        except L2LBenchError:  # not installed: say how to get it
            rows.append({"name": f"{prefix}:*", "source": "library (not installed)",
                         "description": f"pip install {distribution}"})
            continue
        rows += [{"name": f"{prefix}:{name}", "source": f"library {module}", "description": f"{module}.{name}"}
                 for name in names]
    return rows


def cmd_data(args: argparse.Namespace) -> int:
    from l2lbench.tasks.datasets import import_archives

    source = Path(args.source).expanduser()
    if not source.is_dir():
        raise UsageError(f"import source {args.source!r} is not a folder (expected DIR laid out as DIR/MNIST/raw/*.gz)")
    target = _data_dir(args.data_dir)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create data folder {str(target)!r}: {exc.strerror or exc} "
                         "(expected a folder you can write to)") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise UsageError(f"data folder {str(target)!r} is not writable (expected a folder you can write to)")
    try:
        for line in import_archives(source, target):
            print(line)
    except OSError as exc:  # e.g. a full disk half-way: what was imported stays
        where = f": {exc.filename}" if exc.filename else ""
        raise RunError(f"cannot import into {str(target)!r}: {exc.strerror or exc}{where} "
                       "(the datasets imported before it are kept)") from None
    return 0


def cmd_meta_train(args: argparse.Namespace) -> int:
    from l2lbench.cli import meta_train as meta_train_command

    return meta_train_command.run(args, registry=registry_for(args.plugin), data_dir=_data_dir(args.data_dir))


def cmd_report(args: argparse.Namespace) -> int:
    from l2lbench.cli import report as report_command

    return report_command.run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from l2lbench.cli import bench as bench_command

    return bench_command.run(args, registry=registry_for(args.plugin))


COMMANDS = {"bench": cmd_bench, "run": cmd_run, "list": cmd_list, "data": cmd_data, "meta-train": cmd_meta_train, "report": cmd_report}


#: Signals that stop a command the way Ctrl-C does: finished runs kept, exit 128 + signal.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


@contextlib.contextmanager
def _stop_on_signals():
    """Turn the stop signals into :class:`Stopped` in the main thread (elsewhere, e.g. in a
    test's thread, signals cannot be handled and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Stopped(signum)

    previous = {}
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            number = getattr(signal, name)
            previous[number] = signal.signal(number, stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("L2LBENCH_DEBUG") == "1"
    try:
        with _stop_on_signals():
            parser = build_parser()
            if not argv:  # bare `l2lbench`: what it can do, not only that a command is missing
                parser.print_help()
                return 2
            args = parser.parse_args(argv)
            return COMMANDS[args.command](args)
    except L2LBenchError as exc:
        if debug:
            raise
        print(f"l2lbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        stored = exc.stored if isinstance(exc, Stopped) else None
        done = f"{stored} runs finished and stored by this command" if stored is not None else "finished runs are stored"
        print(f"l2lbench: stopped by {signal.Signals(signum).name}; {done}; run the same command to resume",
              file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
