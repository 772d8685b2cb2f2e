"""Explainer for RETAIN (AKI from visit sequences) at the model level: model + tensors in, report
content out. Tensor order of the task's `prediction_inputs`: (x (B, T, F), valid (B, T), labels).

RETAIN decomposes each logit exactly into per-(visit, lab) contributions (alpha, beta; paper
eq. 5): those drive the "why" sentences, which describe each top lab's course over the last
visits from the visit data ("creatinine rose in the last 2 visits"). IG (baseline: every lab at
`reference`, default 0 = the site mean of the standardised labs) and ablation (each lab at the
reference over all visits) give the cohort importance beside RETAIN's own contributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from shared.explain.ablation import retain_ablation
from shared.explain.attention import retain_attention
from shared.explain.cohort import cohort_importance, cohort_rows, select_patients, summed_over_steps
from shared.explain.integrated_gradients import retain_ig
from shared.explain.plots import importance_figure, retain_figure
from shared.explain.registry import ExplainOptions, ProgressHook
from shared.explain.report import PatientExplanation, SiteExplanation, figure_stem

OUTPUT_NAME = "predicted probability of acute kidney injury"
RETAIN_METHOD = "RETAIN contributions (mean |sum over visits|, logit units)"
IG_METHOD = "integrated gradients (mean |attribution|, logit units)"
ABLATION_METHOD = "feature ablation (mean |change of the logit| with the lab at the site mean at every visit)"
METHODS = [
    "RETAIN contributions: alpha_t * w_out . (beta_t * W_emb[:, k]) * x_tk for visit t and lab k (Choi et al. 2016, "
    "eq. 5); with the output bias they sum exactly to the logit. Labs are standardised at the site (0 = site mean).",
    "Integrated gradients (Captum) on the visit labs. Baseline: every lab of every visit at the site mean (0), "
    "visit mask kept; Captum's convergence delta is reported per patient.",
    "Feature ablation (Captum FeatureAblation): one lab set to the site mean at every visit, the model re-run; "
    "effect = logit with the lab - logit without it.",
]


def trend_phrase(name: str, values: np.ndarray, tolerance: float = 1e-3) -> str:
    """How a lab moved over a patient's valid visits (chronological values)."""
    rises = falls = 0
    for later, earlier in zip(values[::-1], values[::-1][1:]):
        if later > earlier + tolerance and not falls:
            rises += 1
        elif later < earlier - tolerance and not rises:
            falls += 1
        else:
            break
    if rises or falls:
        verb = "rose" if rises else "fell"
        steps = rises or falls
        return f"{name} {verb} at the last visit" if steps == 1 else f"{name} {verb} in the last {steps} visits"
    level = values[-1] if len(values) else 0.0
    if abs(level) < 0.5:
        return f"{name} was steady, near the site average"
    return f"{name} was steady, {'above' if level > 0 else 'below'} the site average"


def retain_reasons(x: np.ndarray, contributions: np.ndarray, feature_names: Sequence[str], top: int) -> list[str]:
    """x, contributions (T_valid, F) of one patient -> sentences for the `top` labs by |contribution|."""
    totals = contributions.sum(0)
    sentences = []
    for k in np.argsort(-np.abs(totals), kind="stable")[:top]:
        effect = "raising" if totals[k] > 0 else "lowering"
        sentences.append(f"{trend_phrase(feature_names[k], x[:, k])}, {effect} the predicted risk "
                         f"(RETAIN contribution {totals[k]:+.3f})")
    return sentences


def visit_labels(n: int) -> list[str]:
    """Chronological visits named from the last one: 'visit -2', 'visit -1', 'last visit'."""
    return [f"visit -{n - 1 - t}" if t < n - 1 else "last visit" for t in range(n)]


def explain_retain_dataset(
    model: nn.Module, ids: np.ndarray, dataset: TensorDataset, feature_names: Sequence[str], options: ExplainOptions,
    progress: ProgressHook | None = None, source: Path | str = "<data>",
) -> SiteExplanation:
    model.eval()
    x, valid = dataset.tensors[0].float(), dataset.tensors[1].bool()
    names = list(feature_names)
    attention_all = retain_attention(model, x, valid)
    logits = attention_all.logits if attention_all.logits.dim() == 1 else attention_all.logits[:, 0]
    probabilities = torch.sigmoid(logits).numpy()
    chosen = select_patients(ids, probabilities, options.patients, options.n_patients, Path(source))

    cohort = cohort_rows(len(ids), options.cohort_size, options.seed)
    ig_sums, effects = [], []
    for start in range(0, len(cohort), options.batch_size):
        rows = torch.as_tensor(cohort[start : start + options.batch_size])
        ig = retain_ig(model, x[rows], valid[rows], n_steps=options.cohort_ig_steps, max_steps=options.cohort_ig_max_steps)
        ig_sums.append(summed_over_steps(ig.attributions[0], valid[rows]))
        effects.append(retain_ablation(model, x[rows], valid[rows], names).effects)
        if progress:
            progress("cohort", min(start + options.batch_size, len(cohort)), len(cohort))
    rows = torch.as_tensor(cohort)
    cohort_values = {
        RETAIN_METHOD: cohort_importance(summed_over_steps(attention_all.contributions[rows], valid[rows]), names),
        IG_METHOD: cohort_importance(torch.cat(ig_sums) if ig_sums else np.zeros((0, len(names))), names),
        ABLATION_METHOD: cohort_importance(torch.cat(effects) if effects else np.zeros((0, len(names))), names),
    }
    figures = {
        f"cohort_{i}": importance_figure(list(values), list(values.values()), f"Cohort importance: {method}", "mean |value|")
        for i, (method, values) in enumerate(cohort_values.items())
    }
    titles = {f"cohort_{i}": f"Cohort importance: {method}" for i, method in enumerate(cohort_values)}
    cohort_keys = list(titles)

    patients = []
    for done, row in enumerate(chosen, start=1):
        n = int(valid[row].sum())
        xs, cs = x[row, :n].numpy(), attention_all.contributions[row, :n].numpy()
        ig = retain_ig(model, x[row : row + 1], valid[row : row + 1], n_steps=options.ig_steps, max_steps=options.ig_max_steps)
        ablation = retain_ablation(model, x[row : row + 1], valid[row : row + 1], names)
        key = f"patient_{figure_stem(ids[row])}_contributions"
        figures[key] = retain_figure(cs, visit_labels(n), names, f"Patient {ids[row]}: RETAIN contributions per visit and lab")
        titles[key] = f"Patient {ids[row]}: RETAIN contributions (visits x labs)"
        patients.append(PatientExplanation(
            patient_id=str(ids[row]), output=float(probabilities[row]),
            reasons=retain_reasons(xs, cs, names, options.top_items), figures=[key],
            numbers={
                "logit": float(logits[row]), "alpha": attention_all.alpha[row, :n], "beta": attention_all.beta[row, :n],
                "contributions": cs, "visits": xs, "features": names,
                "ig": ig.attributions[0][0, :n], "ig_convergence_delta": float(ig.delta[0]),
                "ablation_effects": ablation.as_dict(0),
            },
        ))
        if progress:
            progress("patients", done, len(chosen))
    return SiteExplanation(
        task="retain_aki", model=type(model).__name__, source="", output_name=OUTPUT_NAME, methods=METHODS,
        cohort=cohort_values, cohort_size=len(cohort), patients=patients, figures=figures, figure_titles=titles,
        cohort_figures=cohort_keys,
    )
