"""Reports on the results store: leaderboards with honest statistics, and plots.

Modules:
    stats: pure statistics on numpy arrays (bootstrap intervals, speed-up, ranks,
        paired Wilcoxon tests), each with known-answer tests.
    tables: pandas tables from stored runs, rendered through tabulate, csv or json.
    plots: matplotlib figures (PNG and SVG) without pyplot's global state.
    command: ``l2lbench report`` (:func:`command.add_arguments`, :func:`command.run`).

Importing this package imports none of them, so it costs nothing until a report is made.
"""
