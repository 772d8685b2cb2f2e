"""Explainer for the multimodal omics + text model: the task's site explainer and the model-level
explainer it wraps. Tensor order of the task's `prediction_inputs`: (omics (B, G), text (B, D),
present (B, 2), [labels]).

Per patient: each modality's contribution (output minus the output with that modality removed
through its presence flag), IG per omics column (baseline: 0 = the site mean of the standardised
panel with every value observed; text embedding 0 = the site's mean note vector; presence flags
kept), LayerIG on the two input projections (one relevance per modality) and group ablation (each
omics block, the omics and the text modality). Cohort importance over omics blocks and modalities.
The output is the logit (binary labels, reported as a probability) or the Cox risk score
(survival labels: log relative hazard).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from shared.data.omics import PATIENT_ID, load_multimodal_site
from shared.explain.ablation import multimodal_ablation
from shared.explain.attention import multimodal_contributions
from shared.explain.cohort import cohort_batches, cohort_importance, cohort_rows, select_patients, stacked
from shared.explain.integrated_gradients import multimodal_ig
from shared.explain.layer_attribution import multimodal_layer_ig
from shared.explain.options import ExplainOptions, ProgressHook
from shared.explain.plots import cohort_figures, importance_figure
from shared.explain.report import PatientExplanation, SiteExplanation, direction, figure_stem, probability_without
from shared.tasks.base import Task
from shared.tasks.multimodal import MultimodalTask

MODALITIES = ("omics", "text")
MODALITY_WORDS = {"omics": "omics profile", "text": "clinical note"}
IG_METHOD = "integrated gradients per omics block and for the whole text embedding (mean |attribution|)"
LAYER_IG_METHOD = "layer integrated gradients on each modality's input projection (mean |relevance|)"
ABLATION_METHOD = "feature ablation: omics blocks and modalities removed (mean |change of the output|)"
MODALITY_METHOD = "modality contributions (mean |output - output without the modality|)"
METHODS = [
    "Modality contributions: the model's output minus its output with that modality's presence flag off (the "
    "modality's input then never enters the model).",
    "Integrated gradients (Captum IntegratedGradients) on omics and text. Baseline: every omics value at the site "
    "mean (0 after standardisation) and observed (missing-value indicators 0), text embedding 0 (the site's mean "
    "note vector), presence flags kept. A patient's attributions sum to f(patient) - f(baseline) up to Captum's "
    "convergence delta (reported per patient; steps doubled until within 5 %).",
    "Layer integrated gradients (Captum LayerIntegratedGradients) on the first Linear of the omics and of the text "
    "branch together, same baseline: one relevance per modality.",
    "Feature ablation (Captum FeatureAblation): each omics block set to the baseline (values at the site mean, "
    "observed); the omics and the text modality removed through the presence flags; effect = output with - output "
    "without.",
]
COHORT_FIGURES = {
    MODALITY_METHOD: ("cohort_modalities", "Cohort importance: modality contributions", "mean |change of the output|"),
    LAYER_IG_METHOD: ("cohort_layer_integrated_gradients", "Cohort importance: layer IG per modality", "mean |relevance|"),
    IG_METHOD: ("cohort_integrated_gradients", "Cohort importance: integrated gradients", "mean |attribution|"),
    ABLATION_METHOD: ("cohort_ablation", "Cohort importance: feature ablation", "mean |change of the output|"),
}


def omics_column_names(features: Sequence[str], missing_indicators: bool) -> list[str]:
    """Names of the omics input columns: the pinned features, then their missing-value indicators."""
    return list(features) + ([f"{f} missing" for f in features] if missing_indicators else [])


def omics_block_columns(
    blocks: dict[str, list[str]], features: Sequence[str], missing_indicators: bool
) -> dict[str, list[int]]:
    """Block name -> its omics input columns (each member's value and, with indicators, its indicator)."""
    index = {f: i for i, f in enumerate(features)}
    shift = len(features) if missing_indicators else None
    return {
        name: [index[m] for m in members] + ([index[m] + shift for m in members] if shift is not None else [])
        for name, members in blocks.items()
    }


def _groups(omics_names: list[str], omics_blocks: dict[str, slice | Sequence[int]] | None) -> dict[str, list[int]]:
    if omics_blocks is None:
        return {name: [i] for i, name in enumerate(omics_names)}
    n = len(omics_names)
    return {name: list(range(n))[cols] if isinstance(cols, slice) else list(cols) for name, cols in omics_blocks.items()}


def _group_sums(attributions: torch.Tensor, groups: dict[str, list[int]]) -> torch.Tensor:
    """(B, G) per column -> (B, n_groups) summed within each group."""
    return torch.stack([attributions[:, cols].sum(1) for cols in groups.values()], dim=1)


def explain_multimodal_dataset(
    model: nn.Module, ids: np.ndarray, dataset: TensorDataset, omics_names: Sequence[str], options: ExplainOptions,
    omics_blocks: dict[str, slice | Sequence[int]] | None = None, binary: bool = True, progress: ProgressHook | None = None,
    source: Path | str = "<data>", raw_omics: dict[str, np.ndarray] | None = None, n_notes: np.ndarray | None = None,
) -> SiteExplanation:
    """`binary`: the output is a logit (reported as a probability); else a survival risk score.
    `omics_blocks`: block name -> omics columns (default: one group per column). `raw_omics`:
    feature name -> (N,) the site's raw values (NaN = not measured); `n_notes` (N,) notes per
    patient: quoted in the "why" lists."""
    device = torch.device(options.device)
    model = model.to(device).eval()
    omics, text = dataset.tensors[0].float().to(device), dataset.tensors[1].float().to(device)
    present = dataset.tensors[2].bool().to(device)
    names = list(omics_names)
    if len(names) != omics.shape[1]:
        raise ValueError(f"{len(names)} omics names for {omics.shape[1]} omics columns")
    groups = _groups(names, omics_blocks)
    contributions = multimodal_contributions(model, omics, text, present).cpu()  # (N, 2)
    with torch.no_grad():
        outputs = model(torch.where(present[:, :1], omics, 0.0), torch.where(present[:, 1:], text, 0.0), present)
    outputs = (outputs if outputs.dim() == 1 else outputs[:, 0]).cpu()
    shown = torch.sigmoid(outputs).numpy() if binary else outputs.numpy()
    chosen = select_patients(ids, shown, options.patients, options.n_patients, Path(source))

    cohort = cohort_rows(len(ids), options.cohort_size, options.seed)
    ig_rows, layer_rows, effects, ablation_names = [], [], [], list(groups) + list(MODALITIES)
    for rows in cohort_batches(cohort, options.batch_size, progress):
        rows = rows.to(device)
        args = (omics[rows], text[rows], present[rows])
        ig = multimodal_ig(model, *args, n_steps=options.cohort_ig_steps, max_steps=options.cohort_ig_max_steps)
        ig_rows.append(torch.cat([_group_sums(ig.attributions[0], groups), ig.attributions[1].sum(1, keepdim=True)], dim=1))
        layer_rows.append(multimodal_layer_ig(model, *args, n_steps=int(ig.n_steps.max())).per_item())
        ablation = multimodal_ablation(model, *args, groups)
        effects.append(ablation.effects)
    rows = torch.as_tensor(cohort)
    cohort_values = {
        MODALITY_METHOD: cohort_importance(contributions[rows], list(MODALITIES)),
        LAYER_IG_METHOD: cohort_importance(stacked(layer_rows, 2), list(MODALITIES)),
        IG_METHOD: cohort_importance(stacked(ig_rows, len(groups) + 1), list(groups) + ["text"]),
        ABLATION_METHOD: cohort_importance(stacked(effects, len(ablation_names)), ablation_names),
    }
    figures, titles = cohort_figures(cohort_values, COHORT_FIGURES)
    cohort_keys = list(titles)

    patients = []
    for done, row in enumerate(chosen, start=1):
        patients.append(_explain_patient(
            model, int(row), ids, (omics, text, present), contributions, float(shown[row]), names, groups, binary,
            raw_omics, None if n_notes is None else int(n_notes[row]), options, figures, titles,
        ))
        if progress:
            progress("patients", done, len(chosen))
    return SiteExplanation(
        task="multimodal", model=type(model).__name__, source="",
        output_name="predicted probability" if binary else "predicted risk score (log relative hazard)", methods=METHODS,
        cohort=cohort_values, cohort_size=len(cohort), patients=patients, figures=figures, figure_titles=titles,
        cohort_figures=cohort_keys,
        numbers={"omics_columns": names, "omics_blocks": groups, "n_patients": len(ids),
                 "ig_baseline": "omics at the site mean and observed (0), text embedding 0, presence flags kept"},
    )


def _feature_phrase(name: str, z: float, raw_omics: dict[str, np.ndarray] | None, row: int) -> str:
    """'GENE007 high (812; z +1.90 at this site)' from the standardised and the raw value."""
    level = "high" if z > 0.5 else "low" if z < -0.5 else "near the site average"
    raw = None if raw_omics is None or name not in raw_omics else float(raw_omics[name][row])
    if raw is not None and np.isnan(raw):
        return f"{name} not measured (imputed at the site median)"
    value = "" if raw is None else f"{raw:.4g}; "
    return f"{name} {level} ({value}z {z:+.2f} at this site)"


def _explain_patient(
    model: nn.Module, row: int, ids: np.ndarray, tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    contributions: torch.Tensor, shown: float, names: list[str], groups: dict[str, list[int]], binary: bool,
    raw_omics: dict[str, np.ndarray] | None, n_notes: int | None, options: ExplainOptions, figures: dict, titles: dict,
) -> PatientExplanation:
    omics, text, present = (t[row : row + 1] for t in tensors)
    ig = multimodal_ig(model, omics, text, present, n_steps=options.ig_steps, max_steps=options.ig_max_steps)
    layer = multimodal_layer_ig(model, omics, text, present, n_steps=int(ig.n_steps[0]))
    ablation = multimodal_ablation(model, omics, text, present, groups)
    per_column = ig.attributions[0][0].cpu()
    per_group = _group_sums(per_column[None], groups)[0].numpy()
    text_ig = float(ig.attributions[1].sum())
    has = present[0].cpu().numpy()
    unit = "(logit)" if binary else "(log hazard)"
    notes = "" if n_notes is None else f" ({n_notes} note{'s' if n_notes != 1 else ''})"

    reasons = []
    for m, modality in enumerate(MODALITIES):
        word = MODALITY_WORDS[modality]
        if not has[m]:
            reasons.append(f"no {word} for this patient (the model used the other modality only)")
            continue
        c = float(contributions[row, m])
        reasons.append(f"the {word}{notes if modality == 'text' else ''} {direction(c)} the prediction by {abs(c):.3f} "
                       f"{unit} against the same patient without it")
    if has[0]:
        z = omics[0].cpu().numpy()
        for g in np.argsort(-np.abs(per_group), kind="stable")[: options.top_items]:
            name, cols = list(groups)[g], list(groups.values())[g]
            if len(cols) == 1 or (len(cols) == 2 and names[cols[1]] == f"{names[cols[0]]} missing"):  # one feature
                what = _feature_phrase(names[cols[0]], float(z[cols[0]]), raw_omics, row)
            else:
                values = [c for c in cols if not names[c].endswith(" missing")] or cols
                lead = max(values, key=lambda c: abs(float(per_column[c])))
                what = f"omics block {name} ({len(values)} features; most influential {names[lead]}, z {float(z[lead]):+.2f})"
            reasons.append(f"{what} {direction(per_group[g])} the prediction (IG {per_group[g]:+.3f})")
    effects = ablation.as_dict(0)
    group = max(effects, key=lambda g: abs(effects[g]))
    if abs(effects[group]) > 0:
        without = probability_without(shown, effects[group]) if binary else shown - effects[group]
        removed = f"the {MODALITY_WORDS[group]}" if group in MODALITY_WORDS else f"omics block {group} at the site mean"
        output = "predicted probability" if binary else "risk score"
        reasons.append(f"Ablation: without {removed} the {output} would be {without:.3f} instead of {shown:.3f}.")
    if not bool(ig.converged()[0]):
        reasons.append(f"Note: integrated gradients did not converge in {int(ig.n_steps[0])} steps (delta "
                       f"{float(ig.delta[0]):+.3f}); read its numbers with care.")

    key = f"patient_{figure_stem(ids[row])}_omics"
    figures[key] = importance_figure(list(groups) + ["text embedding"], list(per_group) + [text_ig],
                                     f"Patient {ids[row]}: integrated gradients", f"attribution {unit}")
    titles[key] = f"Patient {ids[row]}: integrated gradients per omics block and for the text"
    layer_per_modality = layer.per_item()[0].cpu().numpy()
    return PatientExplanation(
        patient_id=str(ids[row]), output=shown, reasons=reasons, figures=[key],
        numbers={
            "output": float(ig.outputs[0]), "baseline_output": float(ig.baseline_outputs[0]),
            "modality_contributions": {m: float(contributions[row, i]) for i, m in enumerate(MODALITIES)},
            "present": {m: bool(has[i]) for i, m in enumerate(MODALITIES)}, "n_notes": n_notes,
            "omics_ig": dict(zip(names, per_column.tolist())), "omics_block_ig": dict(zip(groups, per_group.tolist())),
            "text_ig": text_ig, "ig_convergence_delta": float(ig.delta[0]), "ig_steps": int(ig.n_steps[0]),
            "ig_converged": bool(ig.converged()[0]),
            "layer_ig": {m: float(layer_per_modality[i]) for i, m in enumerate(MODALITIES)},
            "layer_ig_convergence_delta": float(layer.delta[0]),
            "raw_omics": None if raw_omics is None else {f: float(v[row]) for f, v in raw_omics.items()},
            "ablation_effects": effects,
        },
    )


def explain_multimodal_site(
    task: Task, model: nn.Module, data_dir: Path, state_dir: Path, options: ExplainOptions,
    progress: ProgressHook | None = None,
) -> SiteExplanation:
    """The site's patients (`task.prediction_inputs`, preprocessed with the site's saved scalers),
    explained per omics block (`model.omics_blocks`) with their raw omics values and note counts.
    Binary and survival runs alike."""
    if not isinstance(task, MultimodalTask):
        raise TypeError(f"the multimodal explainer explains the multimodal task, not {task.name}")
    ids, dataset = task.prediction_inputs(data_dir, state_dir)
    features = task.features
    indicators = task.missing_indicators
    data = load_multimodal_site(Path(data_dir), features, None)
    raw = data.omics.reindex(ids)
    n_notes = data.notes.groupby(PATIENT_ID).size().reindex(ids, fill_value=0).to_numpy()
    return explain_multimodal_dataset(
        model, ids, dataset, omics_column_names(features, indicators), options,
        omics_block_columns(task.omics_blocks, features, indicators), task.kind == "binary",
        progress, data_dir, {f: raw[f].to_numpy(float) for f in features}, n_notes,
    )
