"""Captum IntegratedGradients on model inputs, with each model's baseline documented.

IG attributes f(x) - f(baseline) to the input features along the straight path from the
baseline to x; the attributions of a sample sum to that difference up to Captum's convergence
delta (sum(attributions) - (f(x) - f(baseline))), which is reported with every result.

Baselines (what "no information" means per model):
- event transformer: every event feature 0 ("no event information": no type, no text, average
  scaled time, no value) with the padding mask kept as it is, and the site-mean static vector;
- RETAIN: every lab of every valid visit at `reference` (default 0 = the site mean of the
  standardised labs), visit mask kept;
- multimodal: omics at `omics_reference` (default 0), text embedding 0, presence flags kept;
- PSG (sleep): flat signals (0) on every channel, channel and epoch masks kept; demographics at
  `demographics_reference` (default 0).
Models are put in eval mode (dropout off) so f is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from captum.attr import IntegratedGradients
from torch import nn

ForwardFn = Callable[..., torch.Tensor]


REL_TOLERANCE = 0.05  # |delta| <= 5 % of |f(x) - f(baseline)| ...
ABS_TOLERANCE = 1e-3  # ... + this, counts as converged


@dataclass
class IGResult:
    attributions: tuple[torch.Tensor, ...]  # one per input, each of that input's shape
    delta: torch.Tensor  # (B,) Captum's convergence delta: sum(attributions) - (f(x) - f(baseline))
    outputs: torch.Tensor  # (B,) f(x)
    baseline_outputs: torch.Tensor  # (B,) f(baseline)
    n_steps: torch.Tensor  # (B,) integration steps used for each sample

    def total(self) -> torch.Tensor:
        """(B,) sum of every attribution of each sample."""
        return sum(a.flatten(1).sum(1) for a in self.attributions)  # type: ignore[return-value]

    def converged(self) -> torch.Tensor:
        """(B,) bool: |delta| within REL_TOLERANCE of |f(x) - f(baseline)| (+ ABS_TOLERANCE)."""
        return self.delta.abs() <= REL_TOLERANCE * (self.outputs - self.baseline_outputs).abs() + ABS_TOLERANCE


def _rows(args: tuple[object, ...], rows: torch.Tensor) -> tuple[object, ...]:
    return tuple(a[rows] if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args)


def integrated_gradients(
    forward_fn: ForwardFn,
    inputs: Sequence[torch.Tensor],
    baselines: Sequence[torch.Tensor],
    additional_forward_args: Sequence[object] = (),
    n_steps: int = 64,
    internal_batch_size: int | None = None,
    max_steps: int | None = None,
) -> IGResult:
    """IG of `forward_fn(*inputs, *additional_forward_args) -> (B,)`.

    Each baseline has its input's shape or a leading dimension of 1 (shared by all samples).
    With `max_steps`, samples whose delta is not converged (IGResult.converged) are recomputed
    with twice the steps until they are or `max_steps` is reached: a sharp model (a logit that
    jumps from -11 to +13 along the path) needs a few hundred steps where a smooth one needs 20."""
    inputs = tuple(x.detach().float() for x in inputs)
    baselines = tuple(b.detach().to(x.device, x.dtype).expand_as(x) for b, x in zip(baselines, inputs))
    extra = tuple(additional_forward_args)
    ig = IntegratedGradients(forward_fn)

    def attribute(rows: torch.Tensor | None, steps: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        if rows is None:
            ins, bas, ext = inputs, baselines, extra
        else:
            ins, bas, ext = _rows(inputs, rows), _rows(baselines, rows), _rows(extra, rows)
        attributions, delta = ig.attribute(
            ins, baselines=bas, additional_forward_args=ext or None, n_steps=steps,
            internal_batch_size=internal_batch_size, return_convergence_delta=True,
        )
        return tuple(a.detach() for a in attributions), delta.detach()

    attributions, delta = attribute(None, n_steps)
    with torch.no_grad():
        outputs = forward_fn(*inputs, *extra).detach()
        baseline_outputs = forward_fn(*baselines, *extra).detach()
    result = IGResult(attributions, delta, outputs, baseline_outputs, torch.full_like(delta, n_steps, dtype=torch.long))
    steps = n_steps
    while max_steps is not None and steps * 2 <= max_steps and not bool(result.converged().all()):
        steps *= 2
        rows = torch.nonzero(~result.converged()).flatten()
        redone, redone_delta = attribute(rows, steps)
        for full, part in zip(result.attributions, redone):
            full[rows] = part
        result.delta[rows] = redone_delta
        result.n_steps[rows] = steps
    return result


# -- per-model forward functions returning one score per sample --------------------------------


def event_transformer_score(model: nn.Module) -> ForwardFn:
    """(events, statics, valid) -> logit (B,)."""

    def score(events: torch.Tensor, statics: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return model(events, valid.bool(), statics)

    return score


def retain_score(model: nn.Module, output: int = 0) -> ForwardFn:
    """(x, valid) -> logit of `output` (B,)."""

    def score(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        logits = model(x, valid.bool())
        return logits if logits.dim() == 1 else logits[:, output]

    return score


def multimodal_score(model: nn.Module, output: int = 0) -> ForwardFn:
    """(omics, text, present) -> logit of `output` (B,)."""

    def score(omics: torch.Tensor, text: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        logits = model(omics, text, present.bool())
        return logits if logits.dim() == 1 else logits[:, output]

    return score


def sleep_score(model: nn.Module, output: int = 0) -> ForwardFn:
    """A PSG model's score per sample.

    Staging model, called (x, channel_valid, epoch_valid, stages): the mean over valid epochs of
    the log-probability of `stages` (B, N) (the stages the model predicted for the real input,
    so ablations and IG explain that prediction). Diagnosis model, called (x, demographics,
    channel_valid, epoch_valid): the hazard logit of outcome `output`.
    """
    from shared.models.sleep_heads import SleepDiagnosisModel

    if isinstance(model, SleepDiagnosisModel):

        def hazard(x: torch.Tensor, demographics: torch.Tensor, channel_valid: torch.Tensor,
                   epoch_valid: torch.Tensor) -> torch.Tensor:
            return model(x, channel_valid.bool(), epoch_valid.bool(), demographics)[:, output]

        return hazard

    def stage_log_probability(x: torch.Tensor, channel_valid: torch.Tensor, epoch_valid: torch.Tensor,
                              stages: torch.Tensor) -> torch.Tensor:
        epoch_valid = epoch_valid.bool()
        log_p = model(x, channel_valid.bool(), epoch_valid).log_softmax(-1)  # (B, N, K)
        picked = log_p.gather(-1, stages.long()[..., None]).squeeze(-1)  # (B, N)
        picked = torch.where(epoch_valid, picked, 0.0)
        return picked.sum(1) / epoch_valid.sum(1).clamp(min=1)

    return stage_log_probability


# -- per-model IG -------------------------------------------------------------------------------


def event_transformer_ig(
    model: nn.Module,
    events: torch.Tensor,
    valid: torch.Tensor,
    statics: torch.Tensor,
    static_baseline: torch.Tensor,
    n_steps: int = 64,
    internal_batch_size: int | None = None,
    max_steps: int | None = None,
) -> IGResult:
    """attributions = (events (B, L, event_dim), statics (B, static_dim)); baseline: zero events
    (padding mask kept) and `static_baseline` (static_dim,), the site-mean static vector."""
    model.eval()
    return integrated_gradients(
        event_transformer_score(model),
        (events, statics),
        (torch.zeros_like(events[:1]), static_baseline.reshape(1, -1)),
        (valid.bool(),),
        n_steps,
        internal_batch_size,
        max_steps,
    )


def retain_ig(
    model: nn.Module, x: torch.Tensor, valid: torch.Tensor, reference: torch.Tensor | None = None,
    n_steps: int = 64, output: int = 0, max_steps: int | None = None,
) -> IGResult:
    """attributions = (x (B, T, F),); baseline: every visit's labs at `reference` (F,) (default 0)."""
    model.eval()
    keep = valid.bool()[..., None]
    x = torch.where(keep, x.float(), 0.0)  # padding (possibly NaN) never enters the model: 0 in x and baseline
    base = torch.zeros(1, 1, x.shape[-1]) if reference is None else reference.reshape(1, 1, -1).float()
    base = base.to(x.device)
    base = torch.where(keep, base, 0.0)
    return integrated_gradients(retain_score(model, output), (x,), (base,), (valid.bool(),), n_steps, max_steps=max_steps)


def multimodal_ig(
    model: nn.Module, omics: torch.Tensor, text: torch.Tensor, present: torch.Tensor,
    omics_reference: torch.Tensor | None = None, n_steps: int = 64, output: int = 0, max_steps: int | None = None,
) -> IGResult:
    """attributions = (omics (B, G), text (B, D)); baseline: omics at `omics_reference` (G,)
    (default 0), text embedding 0; presence flags kept."""
    model.eval()
    present = present.bool()
    omics = torch.where(present[:, :1], omics.float(), 0.0)  # a missing modality never enters: 0 in input and baseline
    text = torch.where(present[:, 1:], text.float(), 0.0)
    omics_base = torch.zeros(1, omics.shape[1]) if omics_reference is None else omics_reference.reshape(1, -1)
    omics_base = omics_base.to(omics.device)
    return integrated_gradients(
        multimodal_score(model, output),
        (omics, text), (omics_base.float(), torch.zeros(1, text.shape[1], device=text.device)), (present,), n_steps,
        max_steps=max_steps,
    )


def sleep_ig(
    model: nn.Module, x: torch.Tensor, channel_valid: torch.Tensor, epoch_valid: torch.Tensor,
    demographics: torch.Tensor | None = None, demographics_reference: torch.Tensor | None = None,
    n_steps: int = 32, output: int = 0, internal_batch_size: int | None = None, max_steps: int | None = None,
) -> IGResult:
    """Staging: attributions = (x,), score = mean log-probability of the predicted stages.
    Diagnosis (with demographics): attributions = (x, demographics), score = hazard logit of
    `output`. Baseline: flat signals (0); demographics at `demographics_reference` (default 0)."""
    model.eval()
    score = sleep_score(model, output)
    masks = (channel_valid.bool(), epoch_valid.bool())
    if demographics is None:
        with torch.no_grad():
            stages = model(x, *masks).argmax(-1)  # (B, N)
        return integrated_gradients(
            score, (x,), (torch.zeros_like(x[:1]),), (*masks, stages), n_steps, internal_batch_size, max_steps
        )
    demo_base = torch.zeros(1, demographics.shape[1]) if demographics_reference is None else demographics_reference.reshape(1, -1)
    return integrated_gradients(
        score, (x, demographics), (torch.zeros_like(x[:1]), demo_base), masks, n_steps, internal_batch_size, max_steps
    )
