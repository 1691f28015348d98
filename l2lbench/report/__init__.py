"""Reports on the results store: leaderboards with honest statistics, and plots.

Modules, from stored runs to text:
    grouping: runs -> :class:`~grouping.Group` (one optimiser on one task) under display names.
    stats: pure statistics on numpy arrays (bootstrap intervals, speed-up, ranks,
        paired Wilcoxon tests), each with known-answer tests.
    leaderboard, comparisons, completeness, target, published, tuning: the tables, as
        pandas frames at full precision (leaderboards and ranks; paired tests and
        meta-training seeds; missing and failed runs; time to target; the paper's curves;
        a tuned suite's choices).
    model: :class:`~model.Report`, every table of one report (:func:`~model.build_report`).
    render: the report as markdown, github, latex, html, csv or json, one module per format.
    plots: matplotlib figures (PNG and SVG) without pyplot's global state.

The command is :mod:`l2lbench.cli.report`. Importing this package imports none of them, so
it costs nothing until a report is made.
"""
