"""Attention extraction: shapes, rows summing to 1 over valid positions, 0 on padding."""

import pytest
import torch

from shared.explain.attention import (
    event_transformer_attention,
    multimodal_contributions,
    retain_attention,
    sleep_attention,
)
from tests.shared.explain.explain_fixtures import (
    tiny_diagnosis,
    tiny_model,
    tiny_multimodal,
    tiny_retain,
    tiny_site,
    tiny_staging,
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return tiny_site(tmp_path_factory.mktemp("attention"), n=40)


def test_event_attention_maps(site):
    model = tiny_model(site.cfg)
    events, valid, statics = (t[:8] for t in site.tensors[:3])
    valid = valid.clone()
    valid[0, 3:] = False  # a short stay: most positions are padding
    att = event_transformer_attention(model, events, valid, statics)
    b, length = valid.shape
    assert att.pooling.shape == (b, 2, length)  # 2 pooling heads in the tiny model
    torch.testing.assert_close(att.pooling.sum(-1), torch.ones(b, 2))
    assert torch.all(att.pooling.transpose(1, 2)[~valid] == 0)
    assert att.pooling_per_event().shape == (b, length)
    assert len(att.layers) == 1 and att.layers[0].shape == (b, 2, length, length)
    layer = att.layers[0]
    torch.testing.assert_close(layer.sum(-1), torch.ones(b, 2, length))  # every query row sums to 1
    keys_padding = (~valid)[:, None, None, :].expand_as(layer)
    assert torch.all(layer[keys_padding] == 0)  # padding is never attended to
    torch.testing.assert_close(att.logits, model(events, valid, statics))


def test_retain_alpha_beta_contributions():
    model = tiny_retain()
    x = torch.randn(3, 5, 4)
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[1, 2:] = False
    att = retain_attention(model, x, valid)
    assert att.alpha.shape == (3, 5) and att.beta.shape == (3, 5, 8) and att.contributions.shape == (3, 5, 4)
    torch.testing.assert_close(att.alpha.sum(1), torch.ones(3))
    assert torch.all(att.alpha[~valid] == 0) and torch.all(att.contributions[~valid] == 0)
    torch.testing.assert_close(att.contributions.sum((1, 2)) + model.out.bias[0], att.logits, atol=1e-5, rtol=0)


def test_sleep_channel_and_temporal_attention():
    model = tiny_staging()
    x = torch.randn(2, 3, 3 * 6, 64)
    channel_valid = torch.tensor([[True, False, True], [True, True, True]])
    epoch_valid = torch.tensor([[True, True, True], [True, True, False]])
    att = sleep_attention(model, x, channel_valid, epoch_valid)
    assert att.channel_weights.shape == (2, 18, 2, 3) and att.temporal_weights.shape == (2, 3, 2, 6)
    assert att.channel_by_epoch.shape == (2, 3, 3)
    torch.testing.assert_close(att.channel_by_epoch[0].sum(0), torch.ones(3))  # channels share each epoch's weight
    assert torch.all(att.channel_by_epoch[0, 1] == 0)  # the missing channel
    assert torch.all(att.channel_by_epoch[1, :, 2] == 0)  # the padded epoch
    assert att.epoch_weights is None and att.outputs.shape == (2, 3, 5)
    diag = sleep_attention(tiny_diagnosis(), x, channel_valid, epoch_valid, torch.randn(2, 2))
    assert diag.epoch_weights.shape == (2, 1, 3) and diag.outputs.shape == (2, 2)
    assert torch.all(diag.epoch_weights[1, :, 2] == 0)


def test_multimodal_contributions_zero_for_missing_modality():
    model = tiny_multimodal()
    present = torch.tensor([[1, 1], [0, 1], [1, 0]], dtype=torch.bool)
    contributions = multimodal_contributions(model, torch.randn(3, 6), torch.randn(3, 5), present)
    assert contributions.shape == (3, 2)
    assert contributions[1, 0] == 0 and contributions[2, 1] == 0 and contributions[0].abs().sum() > 0
