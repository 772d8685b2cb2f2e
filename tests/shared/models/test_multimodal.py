import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shared.models.multimodal import MultimodalConfig, MultimodalModel, build_multimodal
from shared.models.registry import build_model
from tests.shared.models.opacus_checks import (
    assert_empty_batch_runs,
    assert_grad_samples_exact,
    assert_one_dp_step,
)

B, G, D = 6, 10, 12
FUSIONS = ("early", "cross_attention")


def _model(fusion: str, **overrides: object) -> MultimodalModel:
    torch.manual_seed(0)
    cfg = {"hidden": 16, "dropout": 0.0, "modality_dropout": 0.0, "fusion": fusion} | overrides
    return build_multimodal(omics_dim=G, text_dim=D, **cfg).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    present = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [1, 0], [0, 1]], dtype=torch.bool)
    return torch.randn(B, G), torch.randn(B, D), present


def _bce(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    omics, text, present, y = batch
    return F.binary_cross_entropy_with_logits(model(omics, text, present), y, reduction="sum")


@pytest.mark.parametrize("fusion", FUSIONS)
def test_output_shapes(fusion: str) -> None:
    omics, text, present = _inputs()
    assert _model(fusion)(omics, text, present).shape == (B,)
    assert _model(fusion, n_outputs=3)(omics, text, present).shape == (B, 3)
    assert _model(fusion).modality_contributions(omics, text, present).shape == (B, 2)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_missing_modality_input_is_ignored(fusion: str) -> None:
    model = _model(fusion)
    omics, text, present = _inputs()
    out = model(omics, text, present)
    bad_omics, bad_text = omics.clone(), text.clone()
    bad_omics[~present[:, 0]] = float("nan")
    bad_text[~present[:, 1]] = 1e6 * torch.randn(int((~present[:, 1]).sum()), D)
    garbage_out = model(bad_omics, bad_text, present)
    assert torch.isfinite(garbage_out).all()
    torch.testing.assert_close(garbage_out, out)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_modality_contributions(fusion: str) -> None:
    model = _model(fusion)
    omics, text, present = _inputs()
    contributions = model.modality_contributions(omics, text, present)
    assert (contributions[~present] == 0).all()
    assert (contributions[present] != 0).all()
    without_text = present.clone()
    without_text[:, 1] = False
    torch.testing.assert_close(
        contributions[:, 1], model(omics, text, present) - model(omics, text, without_text)
    )


def test_modality_dropout_never_hides_everything() -> None:
    model = _model("early", modality_dropout=0.5).train()
    present = torch.tensor([[True, True], [True, False], [False, True]]).repeat(400, 1)
    torch.manual_seed(2)
    dropped = model._drop_modalities(present)
    assert dropped.any(dim=1).all()
    assert not (dropped & ~present).any()
    both = slice(0, None, 3)
    hidden_rate = (~dropped[both]).float().mean(0)
    assert ((hidden_rate > 0.15) & (hidden_rate < 0.35)).all()  # 0.5 * (1 - 0.5): one of two hidden
    torch.testing.assert_close(dropped[1::3], present[1::3])


def test_modality_dropout_only_in_training() -> None:
    model = _model("early", modality_dropout=0.5)
    omics, text, present = _inputs()
    torch.testing.assert_close(model(omics, text, present), model(omics, text, present))
    model.train()
    torch.manual_seed(3)
    outputs = torch.stack([model(omics, text, present) for _ in range(20)])
    assert (outputs[:, 0].std() > 0) and (outputs[:, 1].std() == 0)  # only sample 0 has both


def test_config_and_registry() -> None:
    with pytest.raises(ValueError, match="fusion"):
        MultimodalConfig(G, D, fusion="late")
    with pytest.raises(KeyError, match="epochs"):
        build_model("multimodal", omics_dim=G, text_dim=D, hidden=8, epochs=3)
    model = build_model("multimodal", omics_dim=G, text_dim=D, hidden=8, fusion="cross_attention")
    assert (
        isinstance(model, MultimodalModel) and model.cfg.hidden == 8 and model.cfg.fusion == "cross_attention"
    )


@pytest.mark.parametrize("fusion", FUSIONS)
def test_dp_step_with_modality_dropout_and_exact_grad_samples(fusion: str) -> None:
    omics, text, present = _inputs()
    y = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    training = _model(fusion, dropout=0.2, modality_dropout=0.3).train()
    assert_one_dp_step(training, (omics, text, present, y), _bce)
    assert_grad_samples_exact(_model(fusion), (omics, text, present, y), _bce)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_empty_batch_runs(fusion: str) -> None:
    omics, text, present = _inputs()
    assert_empty_batch_runs(_model(fusion).train(), (omics, text, present, torch.ones(B)), _bce)
