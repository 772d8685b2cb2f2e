"""What a site explainer takes besides the task, the model and the site's folders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ProgressHook = Callable[[str, int, int], None]  # (stage, done, total): "cohort" then "patients"


@dataclass
class ExplainOptions:
    patients: list[str] | None = None  # ids to explain; None = the n_patients with the highest output
    n_patients: int = 10
    cohort_size: int = 256  # patients for cohort importance (a seeded sample when the site has more)
    ig_steps: int = 50  # per explained patient, doubled (up to ig_max_steps) until IG's delta has converged
    ig_max_steps: int = 400
    cohort_ig_steps: int = 20  # per cohort patient, doubled up to cohort_ig_max_steps likewise
    cohort_ig_max_steps: int = 160
    batch_size: int = 32
    top_items: int = 5  # events / labs named in each patient's "why" list
    heatmap_items: int = 30  # events shown in a patient's attention heatmap
    device: str = "cpu"
    seed: int = 0
