"""Captum LayerIntegratedGradients on each model's input projection.

The projection turns one input item into one token, so its attributions summed over the token's
channels give one relevance per item: per event (event transformer `input_proj`), per visit
(RETAIN `embed`), per (channel, patch) token (SetTransformer `encoder.token_proj`, the end of its
CNN tokenizer). The layer's baseline activation is its activation on the input baseline of
integrated_gradients.py (zero events / reference labs / flat signals); positions that are the
same in input and baseline (padding) get exactly 0. Other inputs (statics, masks) stay at their
real values, so the attributions sum to f(x) - f(x with the layer at its baseline activation),
up to the reported convergence delta.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from captum.attr import LayerIntegratedGradients
from torch import nn

from shared.explain.integrated_gradients import (
    ForwardFn,
    event_transformer_score,
    multimodal_score,
    retain_score,
    sleep_score,
)


@dataclass
class LayerIGResult:
    attributions: torch.Tensor  # the layer output's shape, e.g. (B, L, D)
    delta: torch.Tensor  # (B,)

    def per_item(self) -> torch.Tensor:
        """Relevance per input item: the attributions summed over the last (channel) dim."""
        return self.attributions.sum(-1)


def input_projection(model: nn.Module) -> nn.Module:
    """The layer that embeds each input item: event transformer, RETAIN, SetTransformer heads."""
    from shared.models.event_transformer import EventTransformer
    from shared.models.retain import Retain
    from shared.models.set_transformer import SetTransformer

    if isinstance(model, EventTransformer):
        return model.input_proj
    if isinstance(model, Retain):
        return model.embed
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, SetTransformer):
        return encoder.token_proj
    raise TypeError(f"no input projection known for {type(model).__name__}")


def layer_integrated_gradients(
    forward_fn: ForwardFn,
    layer: nn.Module | list[nn.Module],
    inputs: Sequence[torch.Tensor],
    baselines: Sequence[torch.Tensor],
    additional_forward_args: Sequence[object] = (),
    n_steps: int = 64,
    internal_batch_size: int | None = None,
) -> LayerIGResult:
    """Captum LayerIntegratedGradients. With a list of layers (outputs of one shape) they are
    attributed together (one delta) and their attributions stacked on dim 1: (B, n_layers, ...)."""
    inputs = tuple(x.detach().float() for x in inputs)
    baselines = tuple(b.detach().to(x.device, x.dtype).expand_as(x) for b, x in zip(baselines, inputs))
    with warnings.catch_warnings():
        # Captum warns on every list of layers; ours are parallel branches, neither feeds the other
        warnings.filterwarnings("ignore", message="Multiple layers provided")
        attributions, delta = LayerIntegratedGradients(forward_fn, layer).attribute(
            inputs if len(inputs) > 1 else inputs[0],
            baselines=baselines if len(baselines) > 1 else baselines[0],
            additional_forward_args=tuple(additional_forward_args) or None,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    if isinstance(layer, list):
        attributions = torch.stack(list(attributions), dim=1)
    return LayerIGResult(attributions.detach(), delta.detach())


def event_transformer_layer_ig(
    model: nn.Module, events: torch.Tensor, valid: torch.Tensor, statics: torch.Tensor, n_steps: int = 64
) -> LayerIGResult:
    """Attributions to `input_proj`'s output (B, L, d_model); per_item() -> (B, L) per event."""
    model.eval()
    return layer_integrated_gradients(
        event_transformer_score(model), input_projection(model), (events,), (torch.zeros_like(events[:1]),),
        (statics.float(), valid.bool()), n_steps,
    )


def retain_layer_ig(
    model: nn.Module, x: torch.Tensor, valid: torch.Tensor, reference: torch.Tensor | None = None,
    n_steps: int = 64, output: int = 0,
) -> LayerIGResult:
    """Attributions to the visit embedding (B, T, emb_dim); per_item() -> (B, T) per visit."""
    model.eval()
    keep = valid.bool()[..., None]
    x = torch.where(keep, x.float(), 0.0)
    base = torch.zeros(1, 1, x.shape[-1]) if reference is None else reference.reshape(1, 1, -1).float()
    base = base.to(x.device)
    base = torch.where(keep, base, 0.0)
    layer = input_projection(model)
    return layer_integrated_gradients(retain_score(model, output), layer, (x,), (base,), (valid.bool(),), n_steps)


def multimodal_projections(model: nn.Module) -> list[nn.Module]:
    """The first Linear of the omics and of the text branch (MODALITIES order)."""
    return [model.omics_encoder[0], model.text_encoder[0]]


def multimodal_layer_ig(
    model: nn.Module, omics: torch.Tensor, text: torch.Tensor, present: torch.Tensor,
    omics_reference: torch.Tensor | None = None, n_steps: int = 64, output: int = 0,
) -> LayerIGResult:
    """Attributions to both input projections (B, 2, hidden) in (omics, text) order; per_item()
    -> (B, 2) per modality. Baseline as `multimodal_ig` (omics at the reference, text 0); a missing
    modality enters as 0 in input and baseline alike, so it gets exactly 0."""
    model.eval()
    present = present.bool()
    omics = torch.where(present[:, :1], omics.float(), 0.0)
    text = torch.where(present[:, 1:], text.float(), 0.0)
    omics_base = torch.zeros(1, omics.shape[1]) if omics_reference is None else omics_reference.reshape(1, -1).float()
    omics_base = omics_base.to(omics.device)
    return layer_integrated_gradients(
        multimodal_score(model, output), multimodal_projections(model), (omics, text),
        (omics_base, torch.zeros(1, text.shape[1], device=text.device)), (present,), n_steps,
    )


def sleep_layer_ig(
    model: nn.Module, x: torch.Tensor, channel_valid: torch.Tensor, epoch_valid: torch.Tensor,
    demographics: torch.Tensor | None = None, n_steps: int = 32, output: int = 0,
) -> LayerIGResult:
    """Attributions to the tokens (B, C*S, E) of the tokenizer; `token_map` reshapes them to
    (B, C, S): one relevance per channel and 5-s patch."""
    model.eval()
    score = sleep_score(model, output)
    masks = (channel_valid.bool(), epoch_valid.bool())
    layer = input_projection(model)
    if demographics is None:
        with torch.no_grad():
            stages = model(x, *masks).argmax(-1)
        return layer_integrated_gradients(score, layer, (x,), (torch.zeros_like(x[:1]),), (*masks, stages), n_steps)
    return layer_integrated_gradients(
        score, layer, (x,), (torch.zeros_like(x[:1]),), (demographics.float(), *masks), n_steps
    )


def token_map(result: LayerIGResult, n_channels: int) -> torch.Tensor:
    """(B, C*S, E) token attributions -> (B, C, S) relevance per channel and patch."""
    per_token = result.per_item()  # (B, C*S)
    return per_token.view(per_token.shape[0], n_channels, -1)
