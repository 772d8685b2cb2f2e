"""Public scaling statistics from a run config's ``data.standardize`` (``{<key>: {mean, sd}}``).

Scalers are never fitted on a site's patients (issue 17: one patient would move every other patient's
features, outside the DP guarantee); the event, RETAIN, omics and tabular featurisers take theirs
from here, on top of their shipped reference values where they have them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from shared.errors import InputError


def parse_public_stats(
    standardize: Mapping[str, object] | None, source: object, is_known: Callable[[str], bool], unknown_problem: str
) -> dict[str, tuple[float, float]]:
    """{key: (mean, sd)} with a finite mean and a finite sd > 0 for each key the featuriser knows; anything
    else raises InputError naming data.standardize.<key> (`unknown_problem` for a key it does not know)."""
    out: dict[str, tuple[float, float]] = {}
    for key, stats in (standardize or {}).items():
        where = f"data.standardize.{key}"
        if not is_known(key):
            raise InputError(source, where, unknown_problem)
        if not isinstance(stats, Mapping) or set(stats) != {"mean", "sd"}:
            got = sorted(stats) if isinstance(stats, Mapping) else type(stats).__name__
            raise InputError(source, where, f"needs exactly {{mean, sd}}, got {got}")
        try:
            mean, sd = float(stats["mean"]), float(stats["sd"])
        except (TypeError, ValueError):
            raise InputError(source, where, f"mean and sd must be numbers, got {stats['mean']!r}, {stats['sd']!r}") from None
        if not (math.isfinite(mean) and math.isfinite(sd) and sd > 0):
            raise InputError(source, where, f"mean must be finite and sd > 0, got {mean:g}, {sd:g}")
        out[str(key)] = (mean, sd)
    return out
