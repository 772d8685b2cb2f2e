"""Site explainer of the ICU-mortality task (event transformer).

For the site's stays (`task.prediction_inputs`, encoded with the site's saved encoder): IG on
the inputs (baseline: no event information, padding mask kept; site-mean statics), LayerIG per
event on `input_proj`, group ablation (event types removed from the mask, text / time / value
blocks, static features -> site reference), attention-pooling and per-layer attention. Cohort
importance over up to `cohort_size` stays; per-patient "why" lists for the selected stays,
naming each event by its type, text, value and hours before the stay's last event.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from shared.data.event_schema import STATIC_CATEGORICAL
from shared.data.events import load_event_site
from shared.explain.ablation import GroupAblation, event_transformer_ablation
from shared.explain.attention import event_transformer_attention
from shared.explain.cohort import cohort_batches, cohort_importance, cohort_rows, event_ig_groups, select_patients, stacked
from shared.explain.event_layout import static_groups, static_mean, static_reference
from shared.explain.integrated_gradients import event_transformer_ig
from shared.explain.layer_attribution import event_transformer_layer_ig
from shared.explain.options import ExplainOptions, ProgressHook
from shared.explain.plots import cohort_figures, event_heads_figure, event_label, shorten
from shared.explain.report import PatientExplanation, SiteExplanation, direction, figure_stem, probability_without
from shared.tasks.base import Task

OUTPUT_NAME = "predicted probability of in-hospital death"
STATIC_LABELS = {"los_hours": "length of stay", "first_careunit": "first care unit", "admission_type": "admission type",
                 "admission_location": "admission location", "marital_status": "marital status"}
IG_METHOD = "integrated gradients (mean |attribution|, logit units)"
ABLATION_METHOD = "feature ablation (mean |change of the logit| when the group is removed)"
METHODS = [
    "Integrated gradients (Captum IntegratedGradients) on the event and static inputs. Baseline: every event "
    "feature 0 (no type, no text, the average time, no value) with the padding mask kept, and the site-mean static "
    "vector. Attributions of a stay sum to logit(stay) - logit(baseline) up to Captum's convergence delta "
    "(reported per stay). Positive = raised the predicted risk.",
    "Layer integrated gradients (Captum LayerIntegratedGradients) on the event input projection: one relevance per "
    "event (summed over the projection's outputs).",
    "Feature ablation (Captum FeatureAblation): a group is really removed and the model re-run. Event types: those "
    "events are taken out of the padding mask. Event text / times / values: set to 0 (no text, the average time, no "
    "value) for every event. Static features: numeric -> site mean, categorical -> the site's most frequent level. "
    "Effect = logit with the group - logit without it.",
    "Attention: the attention-pooling weights per head over a stay's events (they sum to 1 over its events); the "
    "per-layer self-attention maps are summarised as the attention each event receives.",
]


@dataclass
class EventDescriptions:
    """What each tensor position holds, for labels: aligned with `encode_events`' (N, L) layout."""

    types: np.ndarray  # (N, L) object, "" on padding
    texts: np.ndarray  # (N, L) object
    values: np.ndarray  # (N, L) float, NaN where the event has no value
    hours: np.ndarray  # (N, L) float hours before the stay's last event


def describe_events(stays: pd.DataFrame, events: pd.DataFrame, max_events: int) -> EventDescriptions:
    """Event type/text/value per (stay, position), with encode_events' truncation (the most recent
    `max_events` events, left-aligned in time order). stays indexed by stay_id; events sorted."""
    stay_ids = stays.index.to_numpy()
    ev = events[events["stay_id"].isin(stay_ids)]
    last = ev.groupby("stay_id")["charttime"].transform("max")
    hours = ((last - ev["charttime"]).dt.total_seconds() / 3600.0).clip(lower=0.0).to_numpy()
    keep = (ev.groupby("stay_id").cumcount(ascending=False) < max_events).to_numpy()
    ev, hours = ev[keep], hours[keep]
    pos = ev.groupby("stay_id").cumcount().to_numpy()
    row = pd.Index(stay_ids).get_indexer(ev["stay_id"])
    n = len(stay_ids)
    out = EventDescriptions(
        np.full((n, max_events), "", object), np.full((n, max_events), "", object),
        np.full((n, max_events), np.nan), np.zeros((n, max_events)),
    )
    out.types[row, pos] = ev["event_type"].to_numpy()
    out.texts[row, pos] = ev["event_text"].astype(str).to_numpy()
    values = ev["value"].to_numpy(dtype=float) if "value" in ev else np.full(len(ev), np.nan)
    out.values[row, pos] = values
    out.hours[row, pos] = hours
    return out


def static_phrase(column: str, stay: pd.Series) -> str:
    label = STATIC_LABELS.get(column, column.replace("_", " "))
    raw = stay.get(column, "unknown")
    if column == "los_hours":
        return f"{label} {float(raw):.0f} h"
    if column == "age":
        return f"age {float(raw):.0f}"
    if column in STATIC_CATEGORICAL and str(raw) not in STATIC_CATEGORICAL[column]:
        return f"{label} {raw} (not one of the schema's levels: 'other')"
    return f"{label} {raw}"


def ablation_phrase(group: str, probability: float, effect: float) -> str:
    without = probability_without(probability, effect)
    if group.endswith(" events"):
        what = f"without its {group}"
    elif group.startswith("event "):
        what = f"without the {group}"
    else:
        what = f"with {STATIC_LABELS.get(group, group.replace('_', ' '))} at the site's usual value"
    return f"Ablation: {what} the predicted risk would be {without:.3f} instead of {probability:.3f}."


def _predict(model: nn.Module, tensors: tuple[torch.Tensor, ...], batch_size: int) -> np.ndarray:
    events, valid, statics = tensors
    out = []
    step = max(256, batch_size)
    with torch.no_grad():
        for s in range(0, len(events), step):
            out.append(model(events[s : s + step].float(), valid[s : s + step].bool(), statics[s : s + step].float()))
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)


def explain_event_site(
    task: Task, model: nn.Module, data_dir: Path, state_dir: Path, options: ExplainOptions,
    progress: ProgressHook | None = None,
) -> SiteExplanation:
    device = torch.device(options.device)
    model = model.to(device).eval()
    ids, dataset = task.prediction_inputs(data_dir, state_dir)
    events, valid, statics = (t.to(device) for t in dataset.tensors[:3])
    site = load_event_site(data_dir, require_label=False)
    described = describe_events(site.stays, site.events, events.shape[1])
    ig_base, ablation_ref = static_mean(statics.cpu()).to(device), static_reference(statics.cpu()).to(device)
    probabilities = 1.0 / (1.0 + np.exp(-_predict(model, (events, valid, statics), options.batch_size)))
    chosen = select_patients(ids, probabilities, options.patients, options.n_patients, data_dir)

    # cohort importance
    cohort = cohort_rows(len(ids), options.cohort_size, options.seed)
    ig_groups, ablation_effects, names = [], [], []
    for rows in cohort_batches(cohort, options.batch_size, progress):
        rows = rows.to(device)
        ev, va, st = events[rows], valid[rows], statics[rows]
        ig = event_transformer_ig(model, ev, va, st, ig_base, options.cohort_ig_steps, 8 * options.batch_size,
                                  options.cohort_ig_max_steps)
        groups, names = event_ig_groups(ig.attributions[0], ig.attributions[1], ev)
        ig_groups.append(groups)
        ablation_effects.append(event_transformer_ablation(model, ev, va, st, ablation_ref).effects)
    cohort_values = {
        IG_METHOD: cohort_importance(stacked(ig_groups, len(names)), names),
        ABLATION_METHOD: cohort_importance(stacked(ablation_effects, len(names)), names),
    }
    figures, titles = cohort_figures(cohort_values, {
        IG_METHOD: ("cohort_integrated_gradients", "Cohort importance: integrated gradients", "mean |attribution| (logit)"),
        ABLATION_METHOD: ("cohort_ablation", "Cohort importance: feature ablation", "mean |change of the logit|"),
    })

    patients = []
    for done, row in enumerate(chosen, start=1):
        patient = _explain_stay(model, int(row), ids, events, valid, statics, described, site.stays, probabilities,
                                ig_base, ablation_ref, options, figures, titles)
        patients.append(patient)
        if progress:
            progress("patients", done, len(chosen))
    return SiteExplanation(
        task=task.name, model=type(model).__name__, source="", output_name=OUTPUT_NAME, methods=METHODS,
        cohort=cohort_values, cohort_size=len(cohort), patients=patients, figures=figures, figure_titles=titles,
        cohort_figures=["cohort_integrated_gradients", "cohort_ablation"],
        numbers={"static_ig_baseline": ig_base.cpu(), "static_ablation_reference": ablation_ref.cpu(),
                 "static_columns": static_groups(), "n_stays": len(ids)},
    )


def _explain_stay(
    model: nn.Module, row: int, ids: np.ndarray, events: torch.Tensor, valid: torch.Tensor, statics: torch.Tensor,
    described: EventDescriptions, stays: pd.DataFrame, probabilities: np.ndarray, ig_base: torch.Tensor,
    ablation_ref: torch.Tensor, options: ExplainOptions, figures: dict, titles: dict,
) -> PatientExplanation:
    ev, va, st = events[row : row + 1], valid[row : row + 1], statics[row : row + 1]
    ig = event_transformer_ig(model, ev, va, st, ig_base, options.ig_steps, max_steps=options.ig_max_steps)
    layer = event_transformer_layer_ig(model, ev, va, st, options.ig_steps)
    ablation: GroupAblation = event_transformer_ablation(model, ev, va, st, ablation_ref)
    attention = event_transformer_attention(model, ev, va, st)
    positions = np.flatnonzero(va[0].cpu().numpy())
    per_event = ig.attributions[0][0].sum(-1).cpu().numpy()  # (L,)
    per_static = {col: float(ig.attributions[1][0, cols].sum()) for col, cols in static_groups().items()}
    probability = float(probabilities[row])
    stay = stays.loc[ids[row]]

    def label(p: int) -> str:
        value = described.values[row, p]
        return event_label(described.types[row, p], described.texts[row, p], described.hours[row, p],
                           None if np.isnan(value) else float(value))

    reasons = []
    for p in sorted(positions, key=lambda p: -abs(per_event[p]))[: options.top_items]:
        value = described.values[row, p]
        shown = shorten(described.texts[row, p], 80) + ("" if np.isnan(value) else f" = {value:g}")
        reasons.append(f"{described.types[row, p]}: {shown}, {described.hours[row, p]:.1f} h before the last recorded event, "
                       f"{direction(per_event[p])} the predicted risk (IG {per_event[p]:+.3f})")
    for col in sorted(per_static, key=lambda c: -abs(per_static[c]))[:2]:
        reasons.append(f"{static_phrase(col, stay)} {direction(per_static[col])} the predicted risk "
                       f"(IG {per_static[col]:+.3f}, against the site average)")
    if not bool(ig.converged()[0]):
        reasons.append(f"Note: integrated gradients did not converge in {int(ig.n_steps[0])} steps (delta "
                       f"{float(ig.delta[0]):+.3f}); read its numbers with care.")
    effects = ablation.as_dict(0)
    for group in sorted(effects, key=lambda g: -abs(effects[g]))[:2]:
        if abs(effects[group]) > 0:
            reasons.append(ablation_phrase(group, probability, effects[group]))

    pooling = attention.pooling[0].cpu().numpy()  # (H, L)
    shown_positions = np.sort(sorted(positions, key=lambda p: -pooling[:, p].mean())[: options.heatmap_items])
    key = f"stay_{figure_stem(ids[row])}_attention"
    figures[key] = event_heads_figure(
        pooling[:, shown_positions].T, [label(p) for p in shown_positions],
        f"Stay {ids[row]}: attention-pooling weights (predicted risk {probability:.2f})",
    )
    titles[key] = f"Stay {ids[row]}: attention-pooling weights per head"
    received = [m[0].mean(0)[positions][:, positions].mean(0).cpu().numpy() for m in attention.layers]  # per layer (n,)
    return PatientExplanation(
        patient_id=str(ids[row]),
        output=probability,
        reasons=reasons,
        figures=[key],
        numbers={
            "logit": float(ig.outputs[0]),
            "baseline_logit": float(ig.baseline_outputs[0]),
            "ig_convergence_delta": float(ig.delta[0]),
            "ig_steps": int(ig.n_steps[0]),
            "ig_converged": bool(ig.converged()[0]),
            "layer_ig_convergence_delta": float(layer.delta[0]),
            "static_ig": per_static,
            "ablation_effects": effects,
            "events": [
                {
                    "position": int(p), "type": described.types[row, p], "text": described.texts[row, p],
                    "value": described.values[row, p], "hours_before_end": described.hours[row, p],
                    "ig": per_event[p], "layer_ig": float(layer.per_item()[0, p]),
                    "pooling_weights": pooling[:, p], "attention_received_per_layer": [r[i] for r in received],
                }
                for i, p in enumerate(positions)
            ],
        },
    )
