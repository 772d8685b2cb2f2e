"""Captum FeatureAblation over named feature groups that really remove the group.

Each group is a set of input elements (one id in Captum's feature masks, the same id across
input tensors = ablated together) replaced by a baseline that means "this information is
absent". The effect of a group is f(x) - f(x without the group): a change in the model's output
measured by running the model, not a gradient. Groups:

- event transformer: each event type (those events leave the padding mask `valid` entirely and
  their one-hot is cleared), the text-embedding block (0 for every event), the time feature (every
  event at the average scaled time, 0), the value block (no value), each static feature (numeric
  -> site mean; categorical one-hot group -> the site's most frequent level);
- RETAIN: each lab over all visits -> `reference` (default 0, the standardised site mean);
- multimodal: each omics block -> `omics_reference` (default 0), the whole omics modality and
  the text modality through the presence flags;
- PSG: each modality (BAS, RESP, EKG, EMG) through channel_valid (its channels become
  missing), each demographic -> `demographics_reference`.
A sample without any element of a group (no microbiology events) gets effect 0 for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from captum.attr import FeatureAblation
from torch import nn

from shared.explain.event_layout import (
    event_blocks,
    event_type_group_names,
    event_types,
    static_groups,
)
from shared.explain.integrated_gradients import ForwardFn, multimodal_score, retain_score, sleep_score


@dataclass
class GroupAblation:
    names: list[str]
    effects: torch.Tensor  # (B, G): f(x) - f(x without group g)
    outputs: torch.Tensor  # (B,) f(x)

    def as_dict(self, row: int) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.names, self.effects[row])}


def ablate_groups(
    forward_fn: ForwardFn,
    inputs: Sequence[torch.Tensor],
    baselines: Sequence[torch.Tensor | float],
    group_masks: Sequence[torch.Tensor],
    names: Sequence[str],
    additional_forward_args: Sequence[object] = (),
    perturbations_per_eval: int = 4,
) -> GroupAblation:
    """Captum FeatureAblation with `group_masks` (long, broadcastable to each input; values are
    indices into `names`) -> one effect per sample and group."""
    inputs = tuple(x.detach().float() for x in inputs)
    masks = tuple(m.long().to(x.device).expand_as(x) for m, x in zip(group_masks, inputs))
    extra = tuple(additional_forward_args)
    baselines = tuple(b.to(x.device, x.dtype) if isinstance(b, torch.Tensor) else b for b, x in zip(baselines, inputs))
    attributions = FeatureAblation(forward_fn).attribute(
        inputs,
        baselines=baselines,
        additional_forward_args=extra or None,
        feature_mask=masks,
        perturbations_per_eval=perturbations_per_eval,
    )
    b = inputs[0].shape[0]
    flat_masks = torch.cat([m.reshape(b, -1) for m in masks], dim=1)
    flat_attr = torch.cat([a.reshape(b, -1).float() for a in attributions], dim=1)
    # every element of a group carries the same effect; groups absent from a sample stay 0
    effects = torch.zeros(b, len(names), device=flat_attr.device)
    effects = effects.scatter_reduce(1, flat_masks, flat_attr, reduce="mean", include_self=False)
    with torch.no_grad():
        outputs = forward_fn(*inputs, *extra)
    return GroupAblation(list(names), effects.detach().cpu(), outputs.detach().cpu())


def event_transformer_ablation(
    model: nn.Module,
    events: torch.Tensor,
    valid: torch.Tensor,
    statics: torch.Tensor,
    static_reference: torch.Tensor,
    perturbations_per_eval: int = 4,
) -> GroupAblation:
    """Groups: "<type> events" per event type, "event text", "event times", "event values", then
    one per static feature column name (see module docstring for what each removal does)."""
    model.eval()
    type_names = event_type_group_names()
    blocks = event_blocks(events.shape[-1])
    statics_by_name = static_groups()
    names = type_names + list(blocks) + list(statics_by_name)
    block_id = {name: len(type_names) + i for i, name in enumerate(blocks)}
    static_id = {name: len(type_names) + len(blocks) + i for i, name in enumerate(statics_by_name)}

    row_type = event_types(events)  # (B, L): an event's one-hot and mask entry go with its type
    events_mask = row_type[..., None].repeat(1, 1, events.shape[-1])  # (B, L, event_dim)
    for name, columns in blocks.items():
        events_mask[..., columns] = block_id[name]
    statics_mask = torch.zeros(1, statics.shape[1], dtype=torch.long)
    for name, columns in statics_by_name.items():
        statics_mask[0, columns] = static_id[name]

    def score(ev: torch.Tensor, va: torch.Tensor, st: torch.Tensor) -> torch.Tensor:
        return model(ev, va > 0.5, st)

    return ablate_groups(
        score,
        (events, valid, statics),
        (0.0, 0.0, static_reference.float()),
        (events_mask, row_type, statics_mask),
        names,
        perturbations_per_eval=perturbations_per_eval,
    )


def retain_ablation(
    model: nn.Module, x: torch.Tensor, valid: torch.Tensor, feature_names: Sequence[str],
    reference: torch.Tensor | None = None, output: int = 0,
) -> GroupAblation:
    """One group per lab: its value at every visit -> `reference` (F,) (default 0)."""
    model.eval()
    x = torch.where(valid.bool()[..., None], x.float(), 0.0)
    ref = torch.zeros(x.shape[-1]) if reference is None else reference.float()
    mask = torch.arange(x.shape[-1]).reshape(1, 1, -1)
    return ablate_groups(retain_score(model, output), (x,), (ref,), (mask,), feature_names, (valid.bool(),))


def multimodal_ablation(
    model: nn.Module, omics: torch.Tensor, text: torch.Tensor, present: torch.Tensor,
    omics_blocks: dict[str, slice | Sequence[int]] | None = None, omics_reference: torch.Tensor | None = None, output: int = 0,
) -> GroupAblation:
    """Groups: each omics block (values -> `omics_reference`), "omics" (the modality's presence
    flag off) and "text" (the text presence flag off)."""
    model.eval()
    present = present.bool()
    omics = torch.where(present[:, :1], omics.float(), 0.0)
    text = torch.where(present[:, 1:], text.float(), 0.0)
    blocks = omics_blocks or {}
    names = list(blocks) + ["omics", "text"]
    omics_id, text_id = len(blocks), len(blocks) + 1
    omics_mask = torch.full((1, omics.shape[1]), omics_id, dtype=torch.long)
    for i, columns in enumerate(blocks.values()):
        omics_mask[0, columns] = i
    present_mask = torch.tensor([[omics_id, text_id]])
    text_mask = torch.full((1, text.shape[1]), text_id, dtype=torch.long)
    ref = torch.zeros(omics.shape[1]) if omics_reference is None else omics_reference.float()
    return ablate_groups(
        multimodal_score(model, output),
        (omics, text, present.float()),
        (ref, 0.0, 0.0),
        (omics_mask, text_mask, present_mask),
        names,
    )


def sleep_ablation(
    model: nn.Module, x: torch.Tensor, channel_valid: torch.Tensor, epoch_valid: torch.Tensor,
    channel_modality: torch.Tensor, modality_names: Sequence[str],
    demographics: torch.Tensor | None = None, demographics_names: Sequence[str] = (),
    demographics_reference: torch.Tensor | None = None, output: int = 0,
) -> GroupAblation:
    """Groups: each modality (its channels marked missing in channel_valid), then each
    demographic (-> `demographics_reference`, default 0). `channel_modality` (C,) indexes
    `modality_names`."""
    model.eval()
    score = sleep_score(model, output)
    cv_mask = channel_modality.long().reshape(1, -1)
    epoch_valid = epoch_valid.bool()
    if demographics is None:
        with torch.no_grad():
            stages = model(x, channel_valid.bool(), epoch_valid).argmax(-1)

        def staging(cv: torch.Tensor, signal: torch.Tensor, ev: torch.Tensor, st: torch.Tensor) -> torch.Tensor:
            return score(signal, cv, ev, st)

        return ablate_groups(staging, (channel_valid,), (0.0,), (cv_mask,), modality_names, (x, epoch_valid, stages))
    n_mod = len(modality_names)
    demo_mask = torch.arange(n_mod, n_mod + demographics.shape[1]).reshape(1, -1)
    ref = torch.zeros(demographics.shape[1]) if demographics_reference is None else demographics_reference.float()

    def diagnosis(cv: torch.Tensor, demo: torch.Tensor, signal: torch.Tensor, ev: torch.Tensor) -> torch.Tensor:
        return score(signal, demo, cv, ev)

    return ablate_groups(
        diagnosis, (channel_valid, demographics), (0.0, ref), (cv_mask, demo_mask),
        list(modality_names) + list(demographics_names), (x, epoch_valid),
    )
