"""IG completeness (attributions sum to f(x) - f(baseline) within the reported delta), the
documented baselines, and LayerIG on the input projections."""

import pytest
import torch

from shared.explain.event_layout import static_mean
from shared.explain.integrated_gradients import (
    event_transformer_ig,
    integrated_gradients,
    multimodal_ig,
    retain_ig,
    sleep_ig,
)
from shared.explain.layer_attribution import (
    event_transformer_layer_ig,
    input_projection,
    retain_layer_ig,
    sleep_layer_ig,
    token_map,
)
from tests.shared.explain.explain_fixtures import tiny_model, tiny_multimodal, tiny_retain, tiny_site, tiny_staging


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return tiny_site(tmp_path_factory.mktemp("ig"), n=40)


def _completeness(result, atol=1e-4):
    gap = result.total() - (result.outputs - result.baseline_outputs)
    # Captum's delta is exactly this gap; it must also be small against the explained difference
    torch.testing.assert_close(gap, result.delta, atol=atol, rtol=0)
    assert torch.all(result.delta.abs() <= 0.02 * (result.outputs - result.baseline_outputs).abs() + 2e-3)


def test_event_ig_completeness_and_baseline(site):
    model = tiny_model(site.cfg)
    events, valid, statics = site.tensors[:3]
    rows = slice(0, 8)
    base = static_mean(statics)
    result = event_transformer_ig(model, events[rows], valid[rows], statics[rows], base, n_steps=64)
    assert result.attributions[0].shape == events[rows].shape and result.attributions[1].shape == statics[rows].shape
    _completeness(result)
    # the baseline really is: no event information (padding mask kept) and the site-mean statics
    with torch.no_grad():
        expected = model(torch.zeros_like(events[rows]), valid[rows], base.expand(8, -1))
        real = model(events[rows], valid[rows], statics[rows])
    torch.testing.assert_close(result.baseline_outputs, expected)
    torch.testing.assert_close(result.outputs, real)
    assert torch.all(result.attributions[0][~valid[rows]] == 0)  # padding gets exactly nothing


def test_event_layer_ig_per_event(site):
    model = tiny_model(site.cfg)
    events, valid, statics = (t[:6] for t in site.tensors[:3])
    result = event_transformer_layer_ig(model, events, valid, statics, n_steps=64)
    per_event = result.per_item()
    assert per_event.shape == valid.shape
    assert torch.all(per_event[~valid] == 0)
    with torch.no_grad():  # the layer's baseline = its activation on zero events, statics real
        diff = model(events, valid, statics) - model(torch.zeros_like(events), valid, statics)
    torch.testing.assert_close(per_event.sum(1) - diff, result.delta, atol=1e-4, rtol=0)
    assert torch.all(result.delta.abs() <= 0.02 * diff.abs() + 2e-3)
    assert input_projection(model) is model.input_proj


def test_retain_ig_completeness_with_nan_padding():
    model = tiny_retain()
    x = torch.randn(5, 6, 4)
    valid = torch.ones(5, 6, dtype=torch.bool)
    valid[0, 3:] = False
    valid[1, 1:] = False
    x[~valid] = float("nan")  # padding content must not matter
    reference = torch.tensor([0.5, -0.2, 0.0, 1.0])
    result = retain_ig(model, x, valid, reference, n_steps=64)
    _completeness(result)
    assert torch.isfinite(result.attributions[0]).all() and torch.all(result.attributions[0][~valid] == 0)
    with torch.no_grad():
        base = torch.where(valid[..., None], reference, 0.0)
        torch.testing.assert_close(result.baseline_outputs, model(base, valid))
    layer = retain_layer_ig(model, x, valid, reference)
    assert layer.per_item().shape == (5, 6) and torch.all(layer.per_item()[~valid] == 0)


def test_multimodal_ig_completeness_and_missing_modality():
    model = tiny_multimodal()
    omics, text = torch.randn(4, 6), torch.randn(4, 5)
    present = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    result = multimodal_ig(model, omics, text, present, n_steps=64)
    _completeness(result)
    assert torch.all(result.attributions[1][1] == 0) and torch.all(result.attributions[0][2] == 0)


def test_sleep_ig_and_layer_ig_shapes():
    torch.manual_seed(0)
    model = tiny_staging()
    x = torch.randn(2, 3, 2 * 6, 64)  # 3 channels, 2 epochs of 6 patches, 64 samples each
    channel_valid = torch.tensor([[True, True, False], [True, True, True]])
    epoch_valid = torch.tensor([[True, True], [True, False]])
    result = sleep_ig(model, x, channel_valid, epoch_valid, n_steps=32)
    _completeness(result, atol=2e-4)
    assert torch.all(result.attributions[0][0, 2] == 0)  # a missing channel gets nothing
    layer = sleep_layer_ig(model, x, channel_valid, epoch_valid, n_steps=16)
    relevance = token_map(layer, 3)
    assert relevance.shape == (2, 3, 12)
    assert torch.all(relevance[0, 2] == 0) and torch.all(relevance[1, :, 6:] == 0)


def test_unconverged_samples_get_more_steps():
    def sharp(x):  # a logit that jumps from -5 to +5 near x.sum() = 1
        return 5.0 * torch.tanh(40.0 * (x.sum(1) - 1.0))

    x = torch.tensor([[0.3, 0.2], [1.5, 0.5], [0.2, 0.1]])  # rows 0 and 2 stay on the flat part of the path
    coarse = integrated_gradients(sharp, (x,), (torch.zeros(1, 2),), n_steps=8)
    assert not bool(coarse.converged()[1])
    refined = integrated_gradients(sharp, (x,), (torch.zeros(1, 2),), n_steps=8, max_steps=512)
    assert bool(refined.converged().all())
    assert refined.n_steps.tolist()[0] == 8 and refined.n_steps.tolist()[2] == 8 and refined.n_steps.tolist()[1] > 8
    torch.testing.assert_close(refined.attributions[0][0], coarse.attributions[0][0])
    torch.testing.assert_close(refined.total(), refined.outputs - refined.baseline_outputs, atol=0.05 * 10 + 1e-3, rtol=0)
