"""Figures shared by the run report and the privacy audit, and the one way a figure is saved.

Built on matplotlib's Agg canvas directly (no pyplot state: safe in worker threads and without a
display). Round-like x axes (rounds, ledger entries) get integer ticks only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from shared.io import atomic_file, write_json

Points = Sequence[tuple[int, float | None]]  # (round or entry number, value); None: nothing recorded


def save_png(figure: Figure, path: Path, mode: int = 0o644) -> Path:
    """Write `figure` as a PNG, atomically."""
    with atomic_file(path, mode) as handle:
        figure.savefig(handle, format="png")
    return Path(path)


def write_report_files(folder: Path, files: Mapping[str, Any]) -> list[Path]:
    """Write a report's files into `folder`: a dict as JSON, a Figure as PNG (Task.site_report's files)."""
    written = []
    for name, content in files.items():
        path = Path(folder) / name
        written.append(save_png(content, path) if isinstance(content, Figure) else write_json(path, content, indent=2))
    return written


def series_figure(
    series: Mapping[str, Points],
    ylabel: str,
    title: str,
    xlabel: str = "round",
    extra: tuple[str, Points] | None = None,
    targets: Mapping[str, float] | None = None,
) -> Figure:
    """One line per series (label -> points), an optional black `extra` line (e.g. the weighted mean),
    and for each series with a target a dashed line in its colour; x ticks are whole numbers."""
    figure = Figure(figsize=(7, 4), dpi=110)
    axes = figure.add_subplot()
    for index, (label, points) in enumerate(series.items()):
        shown = [(x, y) for x, y in points if y is not None]
        color = f"C{index % 10}"
        if shown:
            axes.plot(*zip(*shown), marker="o", color=color, label=label)
        if targets and label in targets:
            axes.axhline(targets[label], linestyle="--", linewidth=0.8, color=color)
    if extra is not None:
        shown = [(x, y) for x, y in extra[1] if y is not None]
        if shown:
            axes.plot(*zip(*shown), marker="s", color="black", linewidth=2, label=extra[0])
    if targets:
        axes.plot([], [], linestyle="--", linewidth=0.8, color="grey", label="dashed: each site's target")  # one legend entry
        axes.set_ylim(bottom=0)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def epsilon_figure(series: Mapping[str, Points], targets: Mapping[str, float], xlabel: str = "round") -> Figure:
    """Cumulative epsilon per site (label -> (round or ledger entry, epsilon)) with each site's target:
    the privacy figure of both the run report and `fedcare audit`."""
    return series_figure(series, "cumulative epsilon", "Privacy spent per site", xlabel, targets=targets)
