import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from shared.models.registry import build_model


def _model():
    torch.manual_seed(0)
    return build_model("event_transformer", event_dim=12, static_dim=5, d_model=16, layers=2, heads=2, ff=32,
                       pooling_heads=4, mlp_hidden=8, dropout=0.0)


def _batch(b=6, length=9):
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[0, 4:] = False
    valid[1, 1:] = False
    return torch.randn(b, length, 12), valid, torch.randn(b, 5)


def test_shapes_and_attention():
    model = _model().eval()
    events, valid, statics = _batch()
    logits, att = model(events, valid, statics, return_attention=True)
    assert logits.shape == (6,)
    pool = att["pooling"]
    assert pool.shape == (6, 4, 9)
    torch.testing.assert_close(pool.sum(-1), torch.ones(6, 4))
    assert torch.all(pool[0, :, 4:] == 0) and torch.all(pool[1, :, 1:] == 0)
    assert len(att["layers"]) == 2 and att["layers"][0].shape == (6, 2, 9, 9)
    layer0 = att["layers"][0]
    torch.testing.assert_close(layer0[0].sum(-1), torch.ones(2, 9))
    assert torch.all(layer0[0, :, :, 4:] == 0)  # padding receives no attention


def test_padding_values_do_not_change_output():
    model = _model().eval()
    events, valid, statics = _batch()
    before = model(events, valid, statics)
    events2 = events.clone()
    events2[0, 4:] = 100.0
    torch.testing.assert_close(model(events2, valid, statics), before)


def test_sdpa_path_equals_explicit_weights_path():
    model = _model().eval()
    events, valid, statics = _batch()
    fast = model(events, valid, statics)
    slow, _ = model(events, valid, statics, return_attention=True)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_opacus_validates_and_every_parameter_gets_per_sample_grads():
    model = _model()
    assert ModuleValidator.validate(model, strict=False) == []
    events, valid, statics = _batch(8)
    labels = (torch.rand(8) > 0.5).float()
    loader = DataLoader(TensorDataset(events, valid, statics, labels), batch_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gsm, opt, loader = PrivacyEngine().make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False
    )
    e, v, s, y = next(iter(loader))
    torch.nn.functional.binary_cross_entropy_with_logits(gsm(e, v, s), y).backward()
    for name, p in gsm.named_parameters():
        assert p.grad_sample is not None, name
        assert p.grad_sample.shape[0] == 8, name


def test_linear_skip_reads_max_pooled_events_and_statics():
    model = _model().eval()
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()
    events, valid, statics = _batch()
    assert model.skip.in_features == 16 + 5
    logits = model(events, valid, statics)
    assert logits.shape == (6,)
    events2 = events.clone()
    events2[1, 1:] = 50.0  # padding: neither pooling nor the skip sees it
    torch.testing.assert_close(model(events2, valid, statics), logits)
    statics2 = statics.clone()
    statics2[:, 0] += 1.0  # with the MLP's output zeroed, the logit moves by exactly the skip weight
    torch.testing.assert_close(model(events, valid, statics2) - logits, model.skip.weight[0, 16].expand(6))


def _demo_model():
    torch.manual_seed(0)  # event_dim 12 = 5 types + 4 text + time, value z, value present
    return build_model("event_transformer", event_dim=12, static_dim=5, d_model=16, layers=0, heads=2, ff=32,
                       pooling_heads=1, mlp_hidden=8, dropout=0.0, text_interactions=True, normalize_max_pool=True)


def test_text_interactions_add_exactly_text_times_time_and_text_times_value():
    model = _demo_model().eval()
    events, valid, _ = _batch()
    text, time, value = events[..., 5:9], events[..., 9:10], events[..., 10:11]
    expected = model.input_proj(events) + model.text_by_time(text) * time + model.text_by_value(text) * value
    seen = {}
    model.encoder.register_forward_hook(lambda _m, args, _out: seen.update(x=args[0]))
    model(events, valid, torch.randn(6, 5))
    pos = seen["x"] - expected  # what remains is the positional encoding, the same for every stay
    torch.testing.assert_close(pos, pos[:1].expand_as(pos))
    # a stay's "Lactate" (one text direction) counts more with a higher value: bilinear, not additive
    assert model.text_by_time.weight.shape == model.text_by_value.weight.shape == (16, 4)


def test_max_pool_standardised_per_sample_and_every_parameter_gets_per_sample_grads():
    model = _demo_model().eval()
    events, valid, statics = _batch()
    seen = {}
    model.skip.register_forward_hook(lambda _m, args, _out: seen.update(x=args[0]))
    logits = model(events, valid, statics)
    maxed = seen["x"][:, :16]  # the skip reads [max-pooled events | statics]
    torch.testing.assert_close(maxed.mean(-1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(maxed.var(-1, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    # per sample: one stay's events never move another stay's logit (no statistics across the batch)
    events2 = events.clone()
    events2[2] += 3.0
    moved = model(events2, valid, statics) - logits
    assert moved[2].abs() > 0 and torch.all(moved[[0, 1, 3, 4, 5]] == 0)
    model.train()
    assert ModuleValidator.validate(model, strict=False) == []
    loader = DataLoader(TensorDataset(events, valid, statics, (torch.rand(6) > 0.5).float()), batch_size=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gsm, opt, loader = PrivacyEngine().make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False
    )
    e, v, s, y = next(iter(loader))
    torch.nn.functional.binary_cross_entropy_with_logits(gsm(e, v, s), y).backward()
    names = {name for name, p in gsm.named_parameters() if p.grad_sample is not None and p.grad_sample.shape[0] == 6}
    assert {"_module.text_by_time.weight", "_module.text_by_value.weight"} <= names
    assert names == {name for name, _ in gsm.named_parameters()}
