"""Explainer for RETAIN (AKI from visit sequences): the task's site explainer and the model-level
explainer it wraps. Tensor order of the task's `prediction_inputs`: (x (B, T, F), valid (B, T), labels).

RETAIN decomposes each logit exactly into per-(visit, lab) contributions (alpha, beta; paper
eq. 5): those drive the "why" sentences, which describe each top lab's course over the last
visits from the visit data ("creatinine rose in the last 2 visits (1.1 -> 2.3 mg/dL)", in the
site's real units when the site explainer passes them). IG (baseline: every lab at 0 = the site
mean of the standardised labs, visit mask kept), LayerIG on the visit embedding (one relevance per
visit) and ablation (each lab at the site mean over all visits) sit beside RETAIN's own
contributions; the attention figure shows alpha and alpha x beta per visit and lab.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from shared.data.visit_features import VisitEncoder, visit_slots
from shared.data.visits import FEATURES, LAB_FEATURES, load_visit_site
from shared.explain.ablation import retain_ablation
from shared.explain.attention import RetainAttention, retain_attention
from shared.explain.cohort import cohort_batches, cohort_importance, cohort_rows, select_patients, stacked, summed_over_steps
from shared.explain.integrated_gradients import retain_ig
from shared.explain.layer_attribution import retain_layer_ig
from shared.explain.options import ExplainOptions, ProgressHook
from shared.explain.plots import cohort_figures, retain_attention_figure, retain_figure
from shared.explain.report import PatientExplanation, SiteExplanation, direction, figure_stem, probability_without
from shared.tasks.base import Task

OUTPUT_NAME = "predicted probability of acute kidney injury"
RETAIN_METHOD = "RETAIN contributions (mean |sum over visits|, logit units)"
IG_METHOD = "integrated gradients (mean |attribution|, logit units)"
ABLATION_METHOD = "feature ablation (mean |change of the logit| with the lab at the site mean at every visit)"
METHODS = [
    "RETAIN contributions: alpha_t * w_out . (beta_t * W_emb[:, k]) * x_tk for visit t and lab k (Choi et al. 2016, "
    "eq. 5); with the output bias they sum exactly to the logit. Labs are standardised at the site (0 = site mean).",
    "Integrated gradients (Captum IntegratedGradients) on the visit labs. Baseline: every lab of every visit at the "
    "site mean (0 after standardisation), visit mask kept. A patient's attributions sum to logit(patient) - "
    "logit(baseline) up to Captum's convergence delta (reported per patient; steps doubled until within 5 %).",
    "Layer integrated gradients (Captum LayerIntegratedGradients) on the visit embedding (RETAIN's input "
    "projection), same baseline: one relevance per visit (summed over the embedding).",
    "Feature ablation (Captum FeatureAblation): one lab set to the site mean at every visit (the lab's information "
    "removed), the model re-run; effect = logit with the lab - logit without it.",
    "Attention: the visit attention alpha (sums to 1 over a patient's visits) and alpha_t * w_out . (beta_t * "
    "W_emb[:, k]), what the visit and variable attention make of +1 sd of lab k at visit t (logit units).",
]
COHORT_FIGURES = {
    RETAIN_METHOD: ("cohort_retain_contributions", "Cohort importance: RETAIN contributions", "mean |contribution| (logit)"),
    IG_METHOD: ("cohort_integrated_gradients", "Cohort importance: integrated gradients", "mean |attribution| (logit)"),
    ABLATION_METHOD: ("cohort_ablation", "Cohort importance: feature ablation", "mean |change of the logit|"),
}


@dataclass
class VisitDescriptions:
    """What each (patient, visit) position of the tensors holds, in the site's own units."""

    times: np.ndarray  # (N, T) datetime64[ns], NaT on padding
    values: np.ndarray  # (N, T, F) raw lab values the model saw (carried forward / site median), NaN on padding
    measured: np.ndarray  # (N, T, F) bool: the value was measured at that visit (not imputed)
    units: list[str]  # (F,)


def describe_visits(visits: pd.DataFrame, patients: pd.Index, encoder: VisitEncoder, max_visits: int) -> VisitDescriptions:
    """Aligned with `encode_visits(visits, patients, encoder, max_visits)`: same slots, raw units."""
    visits = visits[visits["patient_id"].isin(patients)]
    at = visit_slots(visits, patients, max_visits)
    keep = at.keep
    row, slot = at.row[keep], at.slot[keep]
    n, f = len(patients), len(FEATURES)
    out = VisitDescriptions(
        np.full((n, at.steps), np.datetime64("NaT"), "datetime64[ns]"), np.full((n, at.steps, f), np.nan),
        np.zeros((n, at.steps, f), bool), [LAB_FEATURES[name] for name in FEATURES],
    )
    out.times[row, slot] = visits["timestamp"].to_numpy()[keep]
    out.values[row, slot] = encoder.imputed(visits)[keep]
    out.measured[row, slot] = visits[list(FEATURES)].notna().to_numpy()[keep]
    return out


def _number(value: float) -> str:
    return f"{value:.3g}"


def trend_phrase(
    name: str, values: np.ndarray, tolerance: float = 1e-3, raw: np.ndarray | None = None, unit: str = "",
) -> str:
    """How a lab moved over a patient's valid visits (chronological standardised values); with
    `raw` (the same visits in the site's units) the sentence quotes them."""
    rises = falls = 0
    for later, earlier in zip(values[::-1], values[::-1][1:]):
        if later > earlier + tolerance and not falls:
            rises += 1
        elif later < earlier - tolerance and not rises:
            falls += 1
        else:
            break
    unit = f" {unit}" if unit else ""
    if rises or falls:
        verb = "rose" if rises else "fell"
        steps = rises or falls
        text = f"{name} {verb} at the last visit" if steps == 1 else f"{name} {verb} in the last {steps} visits"
        return text if raw is None else f"{text} ({_number(raw[-1 - steps])} -> {_number(raw[-1])}{unit})"
    level = values[-1] if len(values) else 0.0
    quoted = "" if raw is None or not len(raw) else f" ({_number(raw[-1])}{unit} at the last visit)"
    if abs(level) < 0.5:
        return f"{name} was steady, near the site average{quoted}"
    return f"{name} was steady, {'above' if level > 0 else 'below'} the site average{quoted}"


def retain_reasons(
    x: np.ndarray, contributions: np.ndarray, feature_names: Sequence[str], top: int,
    raw: np.ndarray | None = None, units: Sequence[str] | None = None, ig: np.ndarray | None = None,
    measured: np.ndarray | None = None,
) -> list[str]:
    """x, contributions (T_valid, F) of one patient -> sentences for the `top` labs by |contribution|.
    raw / measured (T_valid, F) and units (F,): the site's real values; ig (T_valid, F) quoted beside."""
    totals = contributions.sum(0)
    sentences = []
    for k in np.argsort(-np.abs(totals), kind="stable")[:top]:
        trend = trend_phrase(feature_names[k], x[:, k], raw=None if raw is None else raw[:, k],
                             unit=units[k] if units else "")
        if measured is not None and not measured[-1, k]:
            trend += ", not measured at the last visit (value carried forward)"
        effect = "raising" if totals[k] > 0 else "lowering"
        quoted = f"RETAIN contribution {totals[k]:+.3f}" + ("" if ig is None else f", IG {ig[:, k].sum():+.3f}")
        sentences.append(f"{trend}, {effect} the predicted risk ({quoted})")
    return sentences


def visit_labels(n: int, times: np.ndarray | None = None) -> list[str]:
    """Chronological visits named from the last one: 'visit -2', 'visit -1', 'last visit'; with
    `times` (n,) also the visit's date and time: '2150-03-01 14:05 (visit -1)'."""
    names = [f"visit -{n - 1 - t}" if t < n - 1 else "last visit" for t in range(n)]
    if times is None:
        return names
    return [f"{pd.Timestamp(time):%Y-%m-%d %H:%M} ({name})" for time, name in zip(times, names)]


def explain_retain_dataset(
    model: nn.Module, ids: np.ndarray, dataset: TensorDataset, feature_names: Sequence[str], options: ExplainOptions,
    progress: ProgressHook | None = None, source: Path | str = "<data>", described: VisitDescriptions | None = None,
) -> SiteExplanation:
    """`described`: the visits in the site's units (times, raw values), aligned with the tensors."""
    device = torch.device(options.device)
    model = model.to(device).eval()
    x, valid = dataset.tensors[0].float().to(device), dataset.tensors[1].bool().to(device)
    names = list(feature_names)
    attention_all = retain_attention(model, x, valid)
    logits = (attention_all.logits if attention_all.logits.dim() == 1 else attention_all.logits[:, 0]).cpu()
    probabilities = torch.sigmoid(logits).numpy()
    chosen = select_patients(ids, probabilities, options.patients, options.n_patients, Path(source))

    cohort = cohort_rows(len(ids), options.cohort_size, options.seed)
    ig_sums, effects = [], []
    for rows in cohort_batches(cohort, options.batch_size, progress):
        rows = rows.to(device)
        ig = retain_ig(model, x[rows], valid[rows], n_steps=options.cohort_ig_steps, max_steps=options.cohort_ig_max_steps)
        ig_sums.append(summed_over_steps(ig.attributions[0], valid[rows]))
        effects.append(retain_ablation(model, x[rows], valid[rows], names).effects)
    rows = torch.as_tensor(cohort, device=device)
    cohort_values = {
        RETAIN_METHOD: cohort_importance(summed_over_steps(attention_all.contributions[rows], valid[rows]).cpu(), names),
        IG_METHOD: cohort_importance(stacked(ig_sums, len(names)), names),
        ABLATION_METHOD: cohort_importance(stacked(effects, len(names)), names),
    }
    figures, titles = cohort_figures(cohort_values, COHORT_FIGURES)
    cohort_keys = list(titles)

    patients = []
    for done, row in enumerate(chosen, start=1):
        patients.append(_explain_patient(model, int(row), ids, x, valid, attention_all, float(probabilities[row]),
                                         names, described, options, figures, titles))
        if progress:
            progress("patients", done, len(chosen))
    return SiteExplanation(
        task="retain_aki", model=type(model).__name__, source="", output_name=OUTPUT_NAME, methods=METHODS,
        cohort=cohort_values, cohort_size=len(cohort), patients=patients, figures=figures, figure_titles=titles,
        cohort_figures=cohort_keys,
        numbers={"features": names, "units": None if described is None else described.units, "n_patients": len(ids),
                 "ig_baseline": "every lab at the site mean (0 after standardisation), visit mask kept"},
    )


def _explain_patient(
    model: nn.Module, row: int, ids: np.ndarray, x: torch.Tensor, valid: torch.Tensor, attention_all: RetainAttention,
    probability: float,
    names: list[str], described: VisitDescriptions | None, options: ExplainOptions, figures: dict, titles: dict,
) -> PatientExplanation:
    n = int(valid[row].sum())
    sl = slice(row, row + 1)
    xs = x[row, :n].cpu().numpy()
    contributions = attention_all.contributions[row, :n].cpu().numpy()
    alpha, weights = attention_all.alpha[row, :n].cpu().numpy(), attention_all.lab_weights[row, :n].cpu().numpy()
    ig = retain_ig(model, x[sl], valid[sl], n_steps=options.ig_steps, max_steps=options.ig_max_steps)
    per_visit_lab = ig.attributions[0][0, :n].cpu().numpy()  # (n, F)
    layer = retain_layer_ig(model, x[sl], valid[sl], n_steps=int(ig.n_steps[0]))
    per_visit = layer.per_item()[0, :n].cpu().numpy()  # (n,)
    ablation = retain_ablation(model, x[sl], valid[sl], names)
    times = None if described is None else described.times[row, :n]
    raw = None if described is None else described.values[row, :n]
    measured = None if described is None else described.measured[row, :n]
    labels = visit_labels(n, times)

    reasons = retain_reasons(xs, contributions, names, options.top_items, raw, None if described is None else described.units,
                             per_visit_lab, measured)
    top_visit = int(np.argmax(alpha))
    reasons.append(f"the model attended most to the visit {labels[top_visit]} (visit attention alpha {alpha[top_visit]:.2f}; "
                   f"layer IG of that visit {per_visit[top_visit]:+.3f})")
    effects = ablation.as_dict(0)
    group = max(effects, key=lambda g: abs(effects[g]))
    if abs(effects[group]) > 0:
        reasons.append(f"Ablation: with {group} at the site mean at every visit the predicted risk would be "
                       f"{probability_without(probability, effects[group]):.3f} instead of {probability:.3f} "
                       f"({group} {direction(effects[group])} it)")
    if not bool(ig.converged()[0]):
        reasons.append(f"Note: integrated gradients did not converge in {int(ig.n_steps[0])} steps (delta "
                       f"{float(ig.delta[0]):+.3f}); read its numbers with care.")

    stem = figure_stem(ids[row])
    contribution_key, attention_key = f"patient_{stem}_contributions", f"patient_{stem}_attention"
    figures[contribution_key] = retain_figure(contributions, labels, names,
                                              f"Patient {ids[row]}: RETAIN contributions per visit and lab")
    titles[contribution_key] = f"Patient {ids[row]}: RETAIN contributions (visits x labs)"
    figures[attention_key] = retain_attention_figure(alpha, weights, labels, names,
                                                     f"Patient {ids[row]}: RETAIN attention (predicted risk {probability:.2f})")
    titles[attention_key] = f"Patient {ids[row]}: visit attention alpha and alpha x beta per lab"
    return PatientExplanation(
        patient_id=str(ids[row]), output=probability, reasons=reasons, figures=[contribution_key, attention_key],
        numbers={
            "logit": float(ig.outputs[0]), "baseline_logit": float(ig.baseline_outputs[0]),
            "features": names, "visit_times": None if times is None else [str(pd.Timestamp(t)) for t in times],
            "visits": xs, "raw_values": raw, "measured": measured,
            "alpha": alpha, "beta": attention_all.beta[row, :n].cpu(), "lab_weights": weights,
            "contributions": contributions,
            "ig": per_visit_lab, "ig_convergence_delta": float(ig.delta[0]), "ig_steps": int(ig.n_steps[0]),
            "ig_converged": bool(ig.converged()[0]),
            "layer_ig_per_visit": per_visit, "layer_ig_convergence_delta": float(layer.delta[0]),
            "ablation_effects": effects,
        },
    )


def explain_retain_site(
    task: Task, model: nn.Module, data_dir: Path, state_dir: Path, options: ExplainOptions,
    progress: ProgressHook | None = None,
) -> SiteExplanation:
    """The site's patients (`task.prediction_inputs`, labs scaled with the site's saved encoder),
    explained with their visit times and real lab values."""
    from shared.tasks.retain_aki import ENCODER_FILE

    ids, dataset = task.prediction_inputs(data_dir, state_dir)
    site = load_visit_site(data_dir, require_label=False)
    encoder = VisitEncoder.load(Path(state_dir) / ENCODER_FILE)
    described = describe_visits(site.visits, pd.Index(ids), encoder, task.cfg.data.max_events)
    return explain_retain_dataset(model, ids, dataset, FEATURES, options, progress, data_dir, described)
