"""Explainer for the PSG SetTransformer heads (sleep staging, sleep diagnosis) at the model level:
model + tensors in, report content out.

A recording is x (1, C, N*k, P) with channel_valid (1, C) and epoch_valid (1, N). Staging is
explained through the mean log-probability of the stages the model predicted; diagnosis
through the hazard logit of one outcome. Per recording: the channel attention as a channels x
time map, LayerIG relevance per channel and 30-s epoch (on the tokenizer's output; baseline flat
signals), and each modality's ablation effect (its channels marked missing). Cohort: mean
|ablation effect| per modality (and demographic) and mean channel attention per channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.explain.ablation import sleep_ablation
from shared.explain.attention import SleepAttention, sleep_attention
from shared.explain.cohort import cohort_importance, cohort_rows, select_patients
from shared.explain.layer_attribution import sleep_layer_ig, token_map
from shared.explain.options import ExplainOptions, ProgressHook
from shared.explain.plots import duration_label, importance_figure, psg_figure
from shared.explain.report import PatientExplanation, SiteExplanation, figure_stem
from shared.models.sleep_heads import SLEEP_MODALITIES, SLEEP_STAGES
from shared.tasks.base import Task
from shared.tasks.sleep import SleepDiagnosisTask, SleepTask

CHANNEL_KIND = {"BAS1": "EEG", "BAS2": "EEG", "BAS3": "EOG"}  # what the default BAS slots hold
DEMOGRAPHICS = ("age", "sex")  # the diagnosis task's demographics tensor columns
ABLATION_METHOD = "feature ablation: modality channels marked missing (mean |change of the score|)"
ATTENTION_METHOD = "channel attention (mean weight over valid epochs)"
METHODS = [
    "Score explained: staging - mean log-probability of the stages the model predicted for the recording; "
    "diagnosis - the hazard logit of the outcome.",
    "Feature ablation (Captum FeatureAblation): all channels of one modality marked missing in channel_valid (the "
    "model then never sees them), demographics set to the reference; effect = score with - score without.",
    "Layer integrated gradients (Captum) on the tokenizer output: relevance per channel and 5-s patch, summed per "
    "30-s epoch. Baseline: flat signals (0) on every channel, masks kept.",
    "Channel attention: the channel-pooling weights, averaged over heads and the patches of each epoch.",
]


def _attention_in_batches(
    model: nn.Module, x: torch.Tensor, channel_valid: torch.Tensor, epoch_valid: torch.Tensor,
    demographics: torch.Tensor | None, batch_size: int,
) -> SleepAttention:
    """`sleep_attention` over the recordings in batches (a site's nights at once would not fit in memory)."""
    parts = [
        sleep_attention(model, x[s : s + batch_size], channel_valid[s : s + batch_size], epoch_valid[s : s + batch_size],
                        None if demographics is None else demographics[s : s + batch_size])
        for s in range(0, len(x), batch_size)
    ]
    fields = ("channel_weights", "temporal_weights", "channel_by_epoch", "epoch_weights", "outputs")
    joined = {f: None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts]) for f in fields}
    return SleepAttention(**joined)


def explain_sleep_site(
    task: Task, model: nn.Module, data_dir: Path, state_dir: Path, options: ExplainOptions,
    progress: ProgressHook | None = None,
) -> SiteExplanation:
    """Site explainer of the sleep tasks (registry entry): the site's recordings as
    `task.prediction_inputs` reads them (hypnograms not needed), channels named by their slot and
    modality, modality ablation over BAS/RESP/EKG/EMG; diagnosis: also age and sex, for the first
    outcome. Runs on the CPU."""
    if not isinstance(task, SleepTask):
        raise TypeError(f"the sleep explainer explains the sleep tasks, not {task.name}")
    model = model.cpu().eval()
    ids, dataset = task.prediction_inputs(data_dir, state_dir)
    x, channel_valid, epoch_valid = dataset.tensors[:3]
    slots = list(task.cfg.data.channel_slots)
    channel_names = [f"{slot} ({CHANNEL_KIND[slot]})" if slot in CHANNEL_KIND else slot for slot in slots]
    diagnosis = isinstance(task, SleepDiagnosisTask)
    explanation = explain_sleep_tensors(
        model, np.asarray(ids), x, channel_valid, epoch_valid, channel_names, task.channel_modality(),
        SLEEP_MODALITIES, options,
        demographics=dataset.tensors[3] if diagnosis else None, demographics_names=DEMOGRAPHICS if diagnosis else (),
        outcome=0, outcome_name=task.outcomes[0] if isinstance(task, SleepDiagnosisTask) else "outcome",
        progress=progress, source=data_dir,
    )
    explanation.numbers = {"channel_slots": slots, "recordings": len(ids), "modalities": list(SLEEP_MODALITIES)}
    return explanation


def explain_sleep_tensors(
    model: nn.Module, ids: np.ndarray, x: torch.Tensor, channel_valid: torch.Tensor, epoch_valid: torch.Tensor,
    channel_names: Sequence[str], channel_modality: torch.Tensor, modality_names: Sequence[str], options: ExplainOptions,
    demographics: torch.Tensor | None = None, demographics_names: Sequence[str] = (), outcome: int = 0,
    outcome_name: str = "outcome", epoch_seconds: float = 30.0, progress: ProgressHook | None = None,
    source: Path | str = "<data>",
) -> SiteExplanation:
    model.eval()
    x, channel_valid, epoch_valid = x.float(), channel_valid.bool(), epoch_valid.bool()
    staging = demographics is None
    attention = _attention_in_batches(model, x, channel_valid, epoch_valid, demographics, options.batch_size)
    if staging:
        probs = attention.outputs.softmax(-1)  # (R, N, 5)
        confidence = torch.where(epoch_valid, probs.max(-1).values, 0.0).sum(1) / epoch_valid.sum(1).clamp(min=1)
        scores = confidence.numpy()
    else:
        scores = attention.outputs[:, outcome].numpy()
    chosen = select_patients(ids, scores, options.patients, options.n_patients, Path(source))
    groups = list(modality_names) + list(demographics_names)

    cohort = cohort_rows(len(ids), options.cohort_size, options.seed)
    effects = []
    for start in range(0, len(cohort), options.batch_size):
        rows = torch.as_tensor(cohort[start : start + options.batch_size])
        demo = None if staging else demographics[rows]
        effects.append(sleep_ablation(model, x[rows], channel_valid[rows], epoch_valid[rows], channel_modality,
                                      modality_names, demo, demographics_names, output=outcome).effects)
        if progress:
            progress("cohort", min(start + options.batch_size, len(cohort)), len(cohort))
    rows = torch.as_tensor(cohort)
    n_epochs = epoch_valid[rows].sum(1).clamp(min=1)[:, None]
    mean_attention = attention.channel_by_epoch[rows].sum(-1) / n_epochs  # (R, C)
    cohort_values = {
        ABLATION_METHOD: cohort_importance(torch.cat(effects) if effects else np.zeros((0, len(groups))), groups),
        ATTENTION_METHOD: cohort_importance(mean_attention, list(channel_names)),
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
        n = int(epoch_valid[row].sum())
        times = [duration_label(e * epoch_seconds) for e in range(n)]
        demo = None if staging else demographics[sl]
        layer = sleep_layer_ig(model, x[sl], channel_valid[sl], epoch_valid[sl], demo, options.ig_steps, outcome)
        relevance = token_map(layer, x.shape[1])[0]  # (C, N*k)
        relevance = relevance.view(x.shape[1], epoch_valid.shape[1], -1).sum(-1)[:, :n].numpy()  # (C, N)
        ablation = sleep_ablation(model, x[sl], channel_valid[sl], epoch_valid[sl], channel_modality, modality_names,
                                  demo, demographics_names, output=outcome)
        stem = figure_stem(ids[row])
        figures[f"recording_{stem}_attention"] = psg_figure(
            attention.channel_by_epoch[row, :, :n].numpy(), channel_names, times, f"Recording {ids[row]}: channel attention")
        figures[f"recording_{stem}_relevance"] = psg_figure(
            relevance, channel_names, times, f"Recording {ids[row]}: LayerIG relevance", "relevance (score units)",
            diverging=True,
        )
        titles[f"recording_{stem}_attention"] = f"Recording {ids[row]}: channel attention (channels x time)"
        titles[f"recording_{stem}_relevance"] = f"Recording {ids[row]}: LayerIG relevance (channels x time)"

        reasons = []
        if staging:
            stages = attention.outputs[row, :n].argmax(-1).numpy()
            shares = np.bincount(stages, minlength=len(SLEEP_STAGES)) / max(n, 1)
            summary = ", ".join(f"{SLEEP_STAGES[k]} {100 * shares[k]:.0f}%" for k in np.argsort(-shares) if shares[k] > 0)
            reasons.append(f"predicted stages over {n} epochs: {summary} (mean confidence {scores[row]:.2f})")
        effects_row = ablation.as_dict(0)
        for group in sorted(effects_row, key=lambda g: -abs(effects_row[g]))[:3]:
            what = f"the {group} channels marked missing" if group in modality_names else f"{group} at the reference"
            reasons.append(f"with {what} the score would change by {-effects_row[group]:+.3f}")
        by_channel = np.abs(relevance).sum(1)
        top_channel = int(by_channel.argmax())
        top_epoch = int(np.abs(relevance[top_channel]).argmax()) if n else 0
        reasons.append(f"most relevant channel: {channel_names[top_channel]}, strongest around {times[top_epoch] if n else '-'}")
        patients.append(PatientExplanation(
            patient_id=str(ids[row]), output=float(scores[row]), reasons=reasons,
            figures=[f"recording_{stem}_attention", f"recording_{stem}_relevance"],
            numbers={
                "channels": list(channel_names), "epoch_onsets_s": [e * epoch_seconds for e in range(n)],
                "channel_attention": attention.channel_by_epoch[row, :, :n], "layer_ig_relevance": relevance,
                "layer_ig_convergence_delta": float(layer.delta[0]), "ablation_effects": effects_row,
            },
        ))
        if progress:
            progress("patients", done, len(chosen))
    return SiteExplanation(
        task="sleep_staging" if staging else "sleep_diagnosis", model=type(model).__name__, source="",
        output_name="mean confidence of the predicted stages" if staging else f"hazard logit ({outcome_name})",
        methods=METHODS, cohort=cohort_values, cohort_size=len(cohort), patients=patients, figures=figures,
        figure_titles=titles, cohort_figures=cohort_keys,
    )
