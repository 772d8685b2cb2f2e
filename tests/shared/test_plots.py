"""The one epsilon figure: whole-number round ticks, the targets dashed, used by the audit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import shared.plots as plots
from shared.privacy.audit import LedgerAudit, plot_epsilon


def _visible_xticks(figure) -> list[float]:
    figure.canvas.draw()
    axes = figure.axes[0]
    low, high = axes.get_xlim()
    return [t for t in axes.get_xticks() if low <= t <= high]


@pytest.mark.parametrize("n_rounds", [1, 2, 3, 7, 40])
def test_epsilon_figure_ticks_are_whole_rounds(n_rounds):
    series = {"a": [(r, 0.3 * r) for r in range(1, n_rounds + 1)], "b": [(r, None if r == 1 else 0.2 * r)
                                                                       for r in range(1, n_rounds + 1)]}
    figure = plots.epsilon_figure(series, {"a": 8.0, "b": 4.0})
    ticks = _visible_xticks(figure)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    axes = figure.axes[0]
    dashed = [line for line in axes.get_lines() if line.get_linestyle() == "--" and len(line.get_ydata())]
    assert sorted(line.get_ydata()[0] for line in dashed) == [4.0, 8.0]
    assert axes.get_ylim()[0] == 0 and axes.get_ylabel() == "cumulative epsilon"


def test_save_png_writes_a_png_atomically(tmp_path):
    path = plots.save_png(plots.epsilon_figure({"a": [(1, 0.5)]}, {}), tmp_path / "figs" / "eps.png", 0o600)
    assert imread(path).ndim == 3 and [p.name for p in path.parent.iterdir()] == ["eps.png"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_audit_draws_the_shared_epsilon_figure(tmp_path, monkeypatch):
    drawn = []
    real = plots.epsilon_figure

    def spy(series, targets, xlabel="round"):
        drawn.append((series, targets, xlabel))
        return real(series, targets, xlabel)

    monkeypatch.setattr(plots, "epsilon_figure", spy)
    audit = LedgerAudit(site="a", path=Path("a.jsonl"), entries=5, rounds_trained=5, recorded_epsilon=2.0,
                        recomputed_epsilon=2.0, delta=1e-5, lifetime_epsilon=None, target_epsilon=3.0, status="ok",
                        epsilon_by_entry=list(np.linspace(0.2, 2.0, 5)))
    plot_epsilon([audit], tmp_path / "epsilon.png")
    (series, targets, xlabel), = drawn
    assert [x for x, _ in series["a (ok)"]] == [1, 2, 3, 4, 5] and targets == {"a (ok)": 3.0}
    assert imread(tmp_path / "epsilon.png").ndim == 3
