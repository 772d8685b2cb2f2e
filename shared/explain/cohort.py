"""Cohort-level importance at a site: mean |attribution| per feature group over the site's patients.

Per-element attributions are first summed within each group per patient (so a group's signed
effect on that patient's output), then averaged in absolute value over patients. The numbers
stay at the site like every other explanation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from shared.errors import InputError
from shared.explain.event_layout import EVENT_BLOCK_NAMES, event_blocks, event_type_group_names, event_types, static_groups


def cohort_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Rows used for cohort importance: all when n <= size, else a seeded sample (sorted)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def cohort_batches(
    cohort: np.ndarray, batch_size: int, progress: Callable[[str, int, int], None] | None = None,
) -> Iterator[torch.Tensor]:
    """The cohort rows in batches (long tensors); reports ("cohort", done, total) after each."""
    for start in range(0, len(cohort), batch_size):
        yield torch.as_tensor(cohort[start : start + batch_size])
        if progress:
            progress("cohort", min(start + batch_size, len(cohort)), len(cohort))


def stacked(parts: Sequence[torch.Tensor], n_groups: int) -> torch.Tensor:
    """Per-batch (b, G) group values -> (N, G); (0, G) when the cohort is empty."""
    return torch.cat([p.detach().cpu() for p in parts]) if parts else torch.zeros(0, n_groups)


def select_patients(ids: np.ndarray, scores: np.ndarray, requested: Sequence[str] | None, n: int, source: Path) -> np.ndarray:
    """Rows to explain one by one: the `requested` ids (in that order) or the `n` highest scores."""
    if requested:
        index = {str(v): i for i, v in enumerate(ids)}
        unknown = [str(p) for p in requested if str(p) not in index]
        if unknown:
            raise InputError(source, "patients", f"unknown patient id(s) at this site: {', '.join(unknown[:10])}")
        return np.array([index[str(p)] for p in requested], dtype=int)
    return np.argsort(-np.asarray(scores), kind="stable")[:n]


def cohort_importance(values: np.ndarray | torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """values (N, G) per-patient group attributions -> {group: mean |value|}, largest first."""
    arr = np.abs(np.asarray(values, dtype=float))
    means = arr.mean(0) if len(arr) else np.zeros(len(names))
    order = np.argsort(-means, kind="stable")
    return {names[i]: float(means[i]) for i in order}


def event_ig_groups(
    events_attr: torch.Tensor, statics_attr: torch.Tensor, events: torch.Tensor
) -> tuple[torch.Tensor, list[str]]:
    """IG attributions of the event transformer -> (B, G) per group, with the group names of
    `ablation.event_transformer_ablation`: each event type (all columns of its events), the
    text / time / value blocks (over every event) and each static feature. Type groups and
    blocks overlap on purpose (rows vs columns), like the ablation groups they sit beside."""
    row_type = event_types(events)  # (B, L)
    per_event = events_attr.sum(-1)  # (B, L)
    is_event = events[..., : len(event_type_group_names())].sum(-1) > 0  # (B, L) rows holding an event
    type_cols = [(per_event * ((row_type == t) & is_event)).sum(1) for t in range(len(event_type_group_names()))]
    block_cols = [events_attr[..., columns].sum((1, 2)) for columns in event_blocks(events.shape[-1]).values()]
    static_cols = [statics_attr[:, columns].sum(1) for columns in static_groups().values()]
    names = event_type_group_names() + list(EVENT_BLOCK_NAMES.values()) + list(static_groups())
    return torch.stack(type_cols + block_cols + static_cols, dim=1), names


def summed_over_steps(attributions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T, F) per-visit/per-epoch attributions -> (B, F) summed over valid steps."""
    return torch.where(valid.bool()[..., None], attributions, 0.0).sum(1)
