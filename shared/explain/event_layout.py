"""Named feature groups of the ICU-event task's tensors, and the static baselines explanations use.

Per event: [one-hot type | text embedding | scaled time | value z-score, value present]
(`shared.data.event_features.event_feature_groups`). Per stay: [numeric statics | one-hot
categorical groups] in `static_feature_names()` order.
"""

from __future__ import annotations

import torch

from shared.data.event_features import event_feature_groups
from shared.data.event_schema import EVENT_TYPES, STATIC_CATEGORICAL, STATIC_NUMERIC

N_TYPES = len(EVENT_TYPES)
# event-column blocks ablated and reported as groups (the one-hot type block is covered by the
# per-type groups, which remove whole events)
EVENT_BLOCK_NAMES = {"text": "event text", "time": "event times", "value": "event values"}


def event_text_dim(event_dim: int) -> int:
    return event_dim - N_TYPES - 3


def event_blocks(event_dim: int) -> dict[str, slice]:
    """Report name -> column slice of the per-event vector, for the text, time and value blocks."""
    groups = event_feature_groups(event_text_dim(event_dim))
    return {label: groups[key] for key, label in EVENT_BLOCK_NAMES.items()}


def event_type_group_names() -> list[str]:
    return [f"{t} events" for t in EVENT_TYPES]


def static_groups() -> dict[str, list[int]]:
    """Static column name -> its columns: one per numeric feature, a one-hot block per categorical."""
    groups, start = {}, 0
    for col in STATIC_NUMERIC:
        groups[col] = [start]
        start += 1
    for col, levels in STATIC_CATEGORICAL.items():
        groups[col] = list(range(start, start + len(levels) + 1))
        start += len(levels) + 1
    return groups


def event_types(events: torch.Tensor) -> torch.Tensor:
    """(B, L, event_dim) -> (B, L) type index (0 on padding rows, whose one-hot is all zero)."""
    return events[..., :N_TYPES].argmax(-1)


def static_mean(statics: torch.Tensor) -> torch.Tensor:
    """(N, S) site statics -> (S,) the site-mean static vector (the IG baseline)."""
    return statics.float().mean(0)


def static_reference(statics: torch.Tensor) -> torch.Tensor:
    """(N, S) site statics -> (S,) the ablation reference: numeric features at the site mean,
    each categorical group set to the site's most frequent level (a real one-hot)."""
    statics = statics.float()
    ref = statics.mean(0)
    for col, columns in static_groups().items():
        if col in STATIC_CATEGORICAL:
            block = torch.zeros(len(columns))
            block[int(statics[:, columns].sum(0).argmax())] = 1.0
            ref[columns] = block
    return ref
