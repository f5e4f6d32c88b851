"""The summary of ``unet prepare`` and ``unet check``: a table, then one line per problem."""

from __future__ import annotations

from typing import Any

from unet_lowered.dataset import dataset_json
from unet_lowered.dataset.layouts import NOTE_KINDS, PROBLEM_KINDS
from unet_lowered.dataset.prepare import Report
from unet_lowered.errors import one_line


def print_report(report: Report, console: Any = None, max_lines: int = 200) -> None:
    """Print the summary table (pairs per split, problems by kind) and one line per problem.

    Args:
        report: What :func:`check` or :func:`prepare` returned.
        console: A ``rich.console.Console`` (default: stdout).
        max_lines: Print at most this many problem lines (all are in ``dataset.json``).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    counts = report.counts()
    mode = report.mode if report.label_values is None else f"classes {report.label_values}"
    if report.class_names:
        mode += " (" + ", ".join(report.class_names) + ")"
    header = f"{report.source}: layout {report.layout}, masks {mode}"
    console.print(escape(one_line(header)), highlight=False, soft_wrap=True)
    table = Table("", "count", "what", title=None)
    table.add_row("train pairs", str(counts["train"]), "image + mask (train/)")
    if counts["val"]:
        table.add_row("val pairs", str(counts["val"]), "image + mask (train/, recorded as val)")
    table.add_row("test images", str(counts["test"]), "no masks (test/)")
    table.add_row("skipped pairs", str(counts["skipped"]), "left out because of a problem")
    for kind, n in counts["problems"].items():
        table.add_row(f"problem: {kind}", str(n), PROBLEM_KINDS.get(kind, ""))
    for kind, n in counts["notes"].items():
        table.add_row(f"note: {kind}", str(n), NOTE_KINDS.get(kind, ""))
    console.print(table)
    for p in report.problems[:max_lines]:
        line = one_line(f"{p.kind:<13} {p.message}")
        console.print(escape(line), soft_wrap=True, highlight=False)
    if len(report.problems) > max_lines:
        more = len(report.problems) - max_lines
        where = f" (all are in {report.dest / dataset_json.FILE})" if report.dest else ""
        console.print(f"... and {more} more problem(s){where}", highlight=False)
    if report.dest is not None:
        console.print(escape(one_line(f"wrote {report.dest}")), highlight=False, soft_wrap=True)
