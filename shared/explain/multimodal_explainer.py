"""Explainer for the multimodal omics + text model at the model level: model + tensors in, report
content out. Tensor order of the task's `prediction_inputs`: (omics (B, G), text (B, D),
present (B, 2), [labels]).

Per patient: each modality's contribution (output minus the output with that modality removed
through its presence flag), IG per omics feature (baseline: `omics_reference`, default 0 = the
site mean of the standardised panel; text embedding 0) and group ablation (omics blocks, the omics
and text modalities). Cohort importance over omics features, blocks and modalities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from shared.explain.ablation import multimodal_ablation
from shared.explain.attention import multimodal_contributions
from shared.explain.cohort import cohort_importance, cohort_rows, select_patients
from shared.explain.integrated_gradients import multimodal_ig
from shared.explain.plots import importance_figure
from shared.explain.registry import ExplainOptions, ProgressHook
from shared.explain.report import PatientExplanation, SiteExplanation, figure_stem

IG_METHOD = "integrated gradients per omics feature and for the whole text embedding (mean |attribution|)"
ABLATION_METHOD = "feature ablation: omics blocks and modalities removed (mean |change of the output|)"
MODALITY_METHOD = "modality contributions (mean |output - output without the modality|)"
METHODS = [
    "Modality contributions: the model's output minus its output with that modality's presence flag off (the "
    "modality's input then never enters the model).",
    "Integrated gradients (Captum) on omics and text. Baseline: omics at the site reference (0 = site mean of the "
    "standardised panel), text embedding 0, presence flags kept; convergence delta reported per patient.",
    "Feature ablation (Captum FeatureAblation): each omics block set to the reference; the omics and the text "
    "modality removed through the presence flags; effect = output with - output without.",
]


def explain_multimodal_dataset(
    model: nn.Module, ids: np.ndarray, dataset: TensorDataset, omics_names: Sequence[str], options: ExplainOptions,
    omics_blocks: dict[str, slice] | None = None, binary: bool = True, progress: ProgressHook | None = None,
    source: Path | str = "<data>",
) -> SiteExplanation:
    """`binary`: the output is a logit (reported as a probability); else a survival risk score."""
    model.eval()
    omics, text, present = dataset.tensors[0].float(), dataset.tensors[1].float(), dataset.tensors[2].bool()
    names = list(omics_names)
    if len(names) != omics.shape[1]:
        raise ValueError(f"{len(names)} omics names for {omics.shape[1]} omics columns")
    contributions = multimodal_contributions(model, omics, text, present)  # (N, 2)
    with torch.no_grad():
        outputs = model(torch.where(present[:, :1], omics, 0.0), torch.where(present[:, 1:], text, 0.0), present)
    outputs = outputs if outputs.dim() == 1 else outputs[:, 0]
    shown = torch.sigmoid(outputs).numpy() if binary else outputs.numpy()
    chosen = select_patients(ids, shown, options.patients, options.n_patients, Path(source))

    cohort = cohort_rows(len(ids), options.cohort_size, options.seed)
    ig_rows, effects, ablation_names = [], [], []
    for start in range(0, len(cohort), options.batch_size):
        rows = torch.as_tensor(cohort[start : start + options.batch_size])
        ig = multimodal_ig(model, omics[rows], text[rows], present[rows], n_steps=options.cohort_ig_steps,
                           max_steps=options.cohort_ig_max_steps)
        ig_rows.append(torch.cat([ig.attributions[0], ig.attributions[1].sum(1, keepdim=True)], dim=1))
        ablation = multimodal_ablation(model, omics[rows], text[rows], present[rows], omics_blocks)
        effects.append(ablation.effects)
        ablation_names = ablation.names
        if progress:
            progress("cohort", min(start + options.batch_size, len(cohort)), len(cohort))
    rows = torch.as_tensor(cohort)
    cohort_values = {
        MODALITY_METHOD: cohort_importance(contributions[rows], ["omics", "text"]),
        IG_METHOD: cohort_importance(torch.cat(ig_rows) if ig_rows else np.zeros((0, len(names) + 1)), names + ["text"]),
        ABLATION_METHOD: cohort_importance(
            torch.cat(effects) if effects else np.zeros((0, 2)), ablation_names or ["omics", "text"]
        ),
    }
    figures = {
        f"cohort_{i}": importance_figure(list(values), list(values.values()), f"Cohort importance: {method}", "mean |value|")
        for i, (method, values) in enumerate(cohort_values.items())
    }
    titles = {f"cohort_{i}": f"Cohort importance: {method}" for i, method in enumerate(cohort_values)}
    cohort_keys = list(titles)

    patients = []
    for done, row in enumerate(chosen, start=1):
        sl = slice(row, row + 1)
        ig = multimodal_ig(model, omics[sl], text[sl], present[sl], n_steps=options.ig_steps, max_steps=options.ig_max_steps)
        per_feature = ig.attributions[0][0].numpy()
        ablation = multimodal_ablation(model, omics[sl], text[sl], present[sl], omics_blocks)
        reasons = []
        for m, modality in enumerate(("omics profile", "clinical note")):
            if not present[row, m]:
                reasons.append(f"no {modality} for this patient (the model used the other modality only)")
                continue
            c = float(contributions[row, m])
            reasons.append(f"the {modality} {'raised' if c > 0 else 'lowered'} the prediction by {abs(c):.3f} (logit) "
                           f"against the same patient without it")
        if present[row, 0]:
            for k in np.argsort(-np.abs(per_feature), kind="stable")[: options.top_items]:
                z = float(omics[row, k])
                level = "high" if z > 0.5 else "low" if z < -0.5 else "near the site average"
                reasons.append(f"{names[k]} {level} (z {z:+.2f}) {'raised' if per_feature[k] > 0 else 'lowered'} the "
                               f"prediction (IG {per_feature[k]:+.3f})")
        key = f"patient_{figure_stem(ids[row])}_omics"
        figures[key] = importance_figure(names + ["text embedding"], list(per_feature) + [float(ig.attributions[1].sum())],
                                         f"Patient {ids[row]}: integrated gradients", "attribution (logit)")
        titles[key] = f"Patient {ids[row]}: integrated gradients per omics feature"
        patients.append(PatientExplanation(
            patient_id=str(ids[row]), output=float(shown[row]), reasons=reasons, figures=[key],
            numbers={
                "modality_contributions": {"omics": float(contributions[row, 0]), "text": float(contributions[row, 1])},
                "present": {"omics": bool(present[row, 0]), "text": bool(present[row, 1])},
                "omics_ig": dict(zip(names, per_feature.tolist())), "text_ig": float(ig.attributions[1].sum()),
                "ig_convergence_delta": float(ig.delta[0]), "ablation_effects": ablation.as_dict(0),
            },
        ))
        if progress:
            progress("patients", done, len(chosen))
    return SiteExplanation(
        task="multimodal", model=type(model).__name__, source="",
        output_name="predicted probability" if binary else "predicted risk score (log hazard)", methods=METHODS,
        cohort=cohort_values, cohort_size=len(cohort), patients=patients, figures=figures, figure_titles=titles,
        cohort_figures=cohort_keys,
    )
