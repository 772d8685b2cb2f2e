"""Group ablation really removes each group: its effect equals the output change of re-running the
model with that group removed by hand (not a gradient)."""

import pytest
import torch

from shared.data.event_schema import EVENT_TYPES, STATIC_CATEGORICAL
from shared.explain.ablation import event_transformer_ablation, multimodal_ablation, retain_ablation, sleep_ablation
from shared.explain.attention import multimodal_contributions
from shared.explain.event_layout import event_blocks, static_groups, static_reference
from tests.shared.explain.explain_fixtures import tiny_model, tiny_multimodal, tiny_retain, tiny_site, tiny_staging


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return tiny_site(tmp_path_factory.mktemp("ablation"), n=40)


def test_event_groups_are_removed_for_real(site):
    model = tiny_model(site.cfg)
    events, valid, statics = (t[:10] for t in site.tensors[:3])
    reference = static_reference(site.tensors[2])
    result = event_transformer_ablation(model, events, valid, statics, reference)
    assert result.effects.shape == (10, len(result.names))
    with torch.no_grad():
        full = model(events, valid, statics)
        torch.testing.assert_close(result.outputs, full)
        for t, event_type in enumerate(EVENT_TYPES):
            of_type = (events[..., t] > 0) & valid
            expected = full - model(events, valid & ~of_type, statics)  # those events leave the mask
            torch.testing.assert_close(result.effects[:, result.names.index(f"{event_type} events")], expected,
                                       atol=1e-5, rtol=0)
            assert torch.all(result.effects[~of_type.any(1), result.names.index(f"{event_type} events")] == 0)
        for name, columns in event_blocks(events.shape[-1]).items():
            hidden = events.clone()
            hidden[..., columns] = 0.0
            torch.testing.assert_close(result.effects[:, result.names.index(name)], full - model(hidden, valid, statics),
                                       atol=1e-5, rtol=0)
        for name, columns in static_groups().items():
            moved = statics.clone()
            moved[:, columns] = reference[columns]
            torch.testing.assert_close(result.effects[:, result.names.index(name)], full - model(events, valid, moved),
                                       atol=1e-5, rtol=0)


def test_static_reference_is_a_real_level(site):
    statics = site.tensors[2]
    reference = static_reference(statics)
    for name, columns in static_groups().items():
        if name in STATIC_CATEGORICAL:
            block = reference[columns]
            assert block.sum() == 1 and set(block.tolist()) <= {0.0, 1.0}
            assert int(block.argmax()) == int(statics[:, columns].sum(0).argmax())  # the most frequent level
        else:
            torch.testing.assert_close(reference[columns], statics[:, columns].mean(0))


def test_retain_ablation_matches_rerun():
    model = tiny_retain()
    x = torch.randn(4, 5, 4)
    valid = torch.ones(4, 5, dtype=torch.bool)
    valid[2, 2:] = False
    result = retain_ablation(model, x, valid, ["creatinine", "bun", "potassium", "urine_output"])
    with torch.no_grad():
        full = model(x, valid)
        for k in range(4):
            moved = x.clone()
            moved[..., k] = 0.0
            torch.testing.assert_close(result.effects[:, k], full - model(moved, valid), atol=1e-5, rtol=0)


def test_multimodal_modality_ablation_equals_modality_contributions():
    model = tiny_multimodal(seed=1)
    omics, text = torch.randn(5, 6), torch.randn(5, 5)
    present = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [1, 1]], dtype=torch.bool)
    blocks = {"expression": slice(0, 4), "clinical": slice(4, 6)}
    result = multimodal_ablation(model, omics, text, present, blocks)
    assert result.names == ["expression", "clinical", "omics", "text"]
    contributions = multimodal_contributions(model, omics, text, present)
    torch.testing.assert_close(result.effects[:, 2], contributions[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(result.effects[:, 3], contributions[:, 1], atol=1e-5, rtol=0)
    assert result.effects[1, 3] == 0 and result.effects[2, 2] == 0 and result.effects[2, 0] == 0  # absent modality
    with torch.no_grad():
        moved = omics.clone()
        moved[:, 4:6] = 0.0
        expected = model(omics, text, present) - model(moved, text, present)
    torch.testing.assert_close(result.effects[[0, 1, 3, 4], 1], expected[[0, 1, 3, 4]], atol=1e-5, rtol=0)


def test_sleep_modality_ablation_marks_channels_missing():
    torch.manual_seed(0)
    model = tiny_staging()
    x = torch.randn(2, 3, 12, 64)
    channel_valid = torch.ones(2, 3, dtype=torch.bool)
    epoch_valid = torch.tensor([[True, True], [True, False]])
    modality = torch.tensor([0, 0, 1])  # BAS, BAS, RESP
    result = sleep_ablation(model, x, channel_valid, epoch_valid, modality, ["BAS", "RESP"])
    with torch.no_grad():
        stages = model(x, channel_valid, epoch_valid).argmax(-1)

        def score(cv):
            logp = model(x, cv, epoch_valid).log_softmax(-1).gather(-1, stages[..., None]).squeeze(-1)
            return torch.where(epoch_valid, logp, 0.0).sum(1) / epoch_valid.sum(1)

        full = score(channel_valid)
        torch.testing.assert_close(result.effects[:, 1], full - score(channel_valid & (modality != 1)), atol=1e-5, rtol=0)
        torch.testing.assert_close(result.effects[:, 0], full - score(channel_valid & (modality != 0)), atol=1e-5, rtol=0)
