"""PNG figures for site reports: heatmaps with named axes and importance bar charts.

Figures are built on matplotlib's Agg canvas directly (no pyplot state, safe in worker threads
and on machines without a display). Every builder returns the Figure, so its tick labels can be
checked before `shared.plots.save_png` writes it atomically.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_LABEL_CHARS = 48


def shorten(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_label(event_type: str, text: str, hours_before_end: float, value: float | None = None) -> str:
    """'lab: Lactate 6.1 (-3.0 h)': type, text (and value), hours before the stay's last event."""
    shown = shorten(text) if value is None or not np.isfinite(value) else f"{shorten(text)} {value:g}"
    return f"{event_type}: {shown} (-{hours_before_end:.1f} h)"


def duration_label(seconds: float) -> str:
    """Elapsed time as '2h05' / '30s' (PSG time axis)."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}"
    return f"{minutes}m{secs:02d}" if minutes else f"{secs}s"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _heatmap(
    values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str, xlabel: str, ylabel: str,
    colorbar_label: str, diverging: bool, max_col_ticks: int = 40,
) -> Figure:
    rows, cols = values.shape
    label_width = 0.065 * max((len(label) for label in row_labels), default=4)  # inches at font size 8
    fig = _figure(min(label_width + 3.0 + 0.4 * min(cols, max_col_ticks), 22.0), min(2.0 + 0.28 * rows, 30.0))
    ax = fig.add_subplot(1, 1, 1)
    if diverging:
        bound = float(np.abs(values).max()) or 1.0
        image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    else:
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest")
    ax.set_yticks(range(rows), list(row_labels), fontsize=8)
    step = max(1, int(np.ceil(cols / max_col_ticks)))
    ticks = list(range(0, cols, step))
    slanted = cols > 8
    ax.set_xticks(ticks, [col_labels[i] for i in ticks], fontsize=8, rotation=45 if slanted else 0,
                  ha="right" if slanted else "center")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=colorbar_label, fraction=0.04)
    fig.tight_layout()
    return fig


def event_heads_figure(weights: np.ndarray, event_labels: Sequence[str], title: str) -> Figure:
    """Pooling attention, events x heads: weights (n_events, n_heads)."""
    heads = [f"head {h + 1}" for h in range(weights.shape[1])]
    return _heatmap(weights, event_labels, heads, title, "attention-pooling head", "event (type: text, hours before end)",
                    "attention weight", diverging=False)


def retain_figure(contributions: np.ndarray, visit_labels: Sequence[str], feature_names: Sequence[str], title: str) -> Figure:
    """RETAIN contributions, visits x labs: contributions (n_visits, n_features), logit units."""
    return _heatmap(contributions, visit_labels, feature_names, title, "lab", "visit",
                    "contribution to the logit", diverging=True)


def retain_attention_figure(
    alpha: np.ndarray, lab_weights: np.ndarray, visit_labels: Sequence[str], feature_names: Sequence[str], title: str,
) -> Figure:
    """RETAIN's attention for one patient: visits x labs heatmap of alpha_t * w_out . (beta_t * W_emb[:, k])
    (logit per +1 sd of the lab at that visit; first axes) beside the visit attention alpha (n_visits,)."""
    rows, cols = lab_weights.shape
    label_width = 0.065 * max((len(label) for label in visit_labels), default=4)
    fig = _figure(min(label_width + 5.5 + 0.45 * cols, 22.0), min(2.2 + 0.3 * rows, 30.0))
    grid = fig.add_gridspec(1, 2, width_ratios=[max(cols, 1), 2.5])
    ax = fig.add_subplot(grid[0, 0])
    bound = float(np.abs(lab_weights).max()) or 1.0
    image = ax.imshow(lab_weights, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    ax.set_yticks(range(rows), list(visit_labels), fontsize=8)
    ax.set_xticks(range(cols), list(feature_names), fontsize=8, rotation=45, ha="right")
    ax.set_xlabel("lab")
    ax.set_ylabel("visit")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="logit per +1 sd", fraction=0.04)
    bars = fig.add_subplot(grid[0, 1], sharey=ax)
    bars.barh(range(rows), alpha, color="#4d4d4d")
    bars.set_xlim(0.0, 1.0)
    bars.set_xlabel("visit attention alpha")
    bars.tick_params(axis="y", labelleft=False)
    fig.tight_layout()
    return fig


def psg_figure(weights: np.ndarray, channel_names: Sequence[str], time_labels: Sequence[str], title: str,
               colorbar_label: str = "channel attention", diverging: bool = False) -> Figure:
    """A PSG map, channels x time: weights (n_channels, n_epochs)."""
    return _heatmap(weights, channel_names, time_labels, title, "time since recording start", "channel",
                    colorbar_label, diverging=diverging)


def importance_figure(names: Sequence[str], values: Sequence[float], title: str, xlabel: str, top: int = 20) -> Figure:
    """Horizontal bars, largest |value| at the top; positive values red, negative blue."""
    arr = np.asarray(values, float)
    order = np.argsort(-np.abs(arr), kind="stable")[:top][::-1]
    shown_names = [shorten(names[i]) for i in order]
    fig = _figure(4.5 + 0.065 * max((len(n) for n in shown_names), default=4), 1.2 + 0.32 * len(order))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(range(len(order)), arr[order], color=["#b2182b" if v > 0 else "#2166ac" for v in arr[order]])
    ax.set_yticks(range(len(order)), shown_names, fontsize=8)
    ax.axvline(0.0, color="black", linewidth=0.6)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def cohort_figures(
    cohort: dict[str, dict[str, float]], labels: dict[str, tuple[str, str, str]]
) -> tuple[dict[str, Figure], dict[str, str]]:
    """Importance bars per cohort method. labels: method -> (figure key, title, x label).
    Returns (figures, titles) keyed by figure key, in `labels` order."""
    figures, titles = {}, {}
    for method, (key, title, xlabel) in labels.items():
        values = cohort[method]
        figures[key] = importance_figure(list(values), list(values.values()), title, xlabel)
        titles[key] = title
    return figures, titles


def axis_labels(fig: Figure) -> tuple[list[str], list[str]]:
    """(x tick labels, y tick labels) of the figure's first axes."""
    ax = fig.axes[0]
    return [t.get_text() for t in ax.get_xticklabels()], [t.get_text() for t in ax.get_yticklabels()]
