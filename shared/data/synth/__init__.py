"""Synthetic site generators, kept apart from the loaders that read real data.

`synthesize_sites` is the one entry point: `fedcare synth` calls it directly (so writing synthetic
data imports no loader, task or model), and each task's `synthesize` delegates to it. Each
generator module imports only the format's names (shared/data/*_schema.py) and its writer
(shared/data/writers.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from shared.errors import InputError

# task -> the generator module under shared/data/synth/
SYNTH_TASKS = {
    "event_mortality": "events",
    "retain_aki": "visits",
    "multimodal": "omics",
    "sleep_staging": "psg",
    "sleep_diagnosis": "psg",
    "tabular_binary": "tabular",
    "tabular_survival": "tabular",
}


def synthesize_sites(
    task: str,
    out_dir: Path,
    sites: list[str],
    seed: int = 0,
    sizes: list[int] | None = None,
    *,
    minutes: float | None = None,
    label: str = "binary",
) -> list[Path]:
    """Write one synthetic folder per name in `sites` under `out_dir` for `task`; returns the folders.

    sizes: patients (stays, recordings) per site, None for the generator's defaults; minutes: the
    length of a synthetic sleep recording; label: binary or survival labels of the multimodal task.
    """
    if task not in SYNTH_TASKS:
        raise InputError("<command line>", "--task", f"unknown task {task!r}; known: {', '.join(SYNTH_TASKS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if task in ("tabular_binary", "tabular_survival"):
        from shared.data.synth.tabular import synthesize_tabular_sites

        return synthesize_tabular_sites(out_dir, sites, "survival" if task == "tabular_survival" else "binary", sizes, seed)
    n = len(sites)
    if task == "event_mortality":
        from shared.data.synth.events import synthesize_event_sites

        made = synthesize_event_sites(out_dir, n_sites=n, sizes=sizes, seed=seed)
    elif task == "retain_aki":
        from shared.data.synth.visits import synthesize_visit_sites

        made = synthesize_visit_sites(out_dir, n_sites=n, sizes=sizes, seed=seed)
    elif task == "multimodal":
        from shared.data.synth.omics import synthesize_multimodal_sites

        made = synthesize_multimodal_sites(out_dir, n_sites=n, sizes=sizes, seed=seed, label=label)
    else:
        from shared.data.synth.psg import DEFAULT_SYNTH_MINUTES, synthesize_psg_sites

        made = synthesize_psg_sites(out_dir, n_sites=n, sizes=sizes, seed=seed, minutes=minutes or DEFAULT_SYNTH_MINUTES)
    # the generators name their folders hospital_a / site_0 ...; the caller's names win
    folders = []
    for path, site in zip(made, sites):
        if path.name != site:
            if (out_dir / site).exists():
                shutil.rmtree(out_dir / site)
            path.rename(out_dir / site)
        folders.append(out_dir / site)
    return folders
