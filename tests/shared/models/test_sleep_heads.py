import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shared.models.registry import build_model
from shared.models.set_transformer import SetTransformerConfig
from shared.models.sleep_heads import (
    SLEEP_MODALITIES,
    ContrastivePretrainer,
    SleepDiagnosisModel,
    SleepStagingModel,
)
from tests.shared.models.opacus_checks import (
    assert_empty_batch_runs,
    assert_grad_samples_exact,
    assert_one_dp_step,
)

B, C, N, P = 3, 4, 3, 640  # N epochs of 6 patches
CFG = SetTransformerConfig.small(dropout=0.0)
HEAD = {"lstm_hidden": 8, "dropout": 0.0}


def _night() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(B, C, N * 6, P)
    channel_valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    epoch_valid = torch.arange(N)[None, :] < torch.tensor([[3], [2], [1]])
    return x, channel_valid, epoch_valid


def _staging(**overrides: object) -> SleepStagingModel:
    torch.manual_seed(0)
    return SleepStagingModel(CFG, **(HEAD | {"epoch_heads": 2, "epoch_ff": 32} | overrides)).eval()


def _diagnosis() -> SleepDiagnosisModel:
    torch.manual_seed(0)
    return SleepDiagnosisModel(CFG, n_outcomes=3, hidden=16, **HEAD).eval()


def _staging_loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    x, channel_valid, epoch_valid, stages = batch
    logits = model(x, channel_valid, epoch_valid)
    return F.cross_entropy(logits[epoch_valid], stages[epoch_valid], reduction="sum")


def test_staging_logits_per_epoch_and_padding_invariance() -> None:
    model = _staging()
    x, channel_valid, epoch_valid = _night()
    logits, weights = model.forward_with_attention(x, channel_valid, epoch_valid)
    assert logits.shape == (B, N, 5)
    assert weights["channel_weights"].shape == (B, N * 6, 2, C)
    assert weights["temporal_weights"].shape == (B, N, 2, 6)
    garbage = x.clone()
    garbage[1, :, 12:] = float("nan")  # sample 1's padded third epoch
    garbage[0, 3] = 1e6  # sample 0's missing channel
    torch.testing.assert_close(model(garbage, channel_valid, epoch_valid), logits)
    alone = model(x[1:2, :, :12], channel_valid[1:2], epoch_valid[1:2, :2])
    torch.testing.assert_close(alone, logits[1:2, :2])


def test_diagnosis_hazards_use_demographics_and_ignore_padding() -> None:
    model = _diagnosis()
    x, channel_valid, epoch_valid = _night()
    demographics = torch.tensor([[0.5, 1.0], [-0.2, 0.0], [1.3, 1.0]])
    logits, weights = model.forward_with_attention(x, channel_valid, epoch_valid, demographics)
    assert logits.shape == (B, 3)
    assert weights["epoch_weights"].shape == (B, 1, N)
    assert (weights["epoch_weights"][2, :, 1:] == 0).all()
    garbage = x.clone()
    garbage[2, :, 6:] = float("nan")
    torch.testing.assert_close(model(garbage, channel_valid, epoch_valid, demographics), logits)
    older = demographics.clone()
    older[:, 0] += 1.0
    assert not torch.allclose(model(x, channel_valid, epoch_valid, older), logits)


def test_contrastive_embeddings_per_modality() -> None:
    torch.manual_seed(0)
    model = ContrastivePretrainer(CFG, projection_dim=16).eval()
    x, channel_valid, epoch_valid = _night()
    patch_valid = epoch_valid.repeat_interleave(6, dim=1)
    channel_modality = torch.tensor([0, 1, 0, 3])  # BAS, RESP, BAS, EMG; no EKG channel
    embeddings = model.modality_embeddings(x, channel_valid, patch_valid, channel_modality)
    assert list(embeddings) == list(SLEEP_MODALITIES)
    assert all(e.shape == (B, 16) for e in embeddings.values())
    present = model.modality_present(channel_valid, channel_modality)
    assert present.tolist() == [
        [True, True, False, False],
        [True, True, False, True],
        [True, True, False, True],
    ]
    assert (embeddings["EKG"] == 0).all() and (embeddings["EMG"][0] == 0).all()
    assert (embeddings["BAS"].abs().sum(-1) > 0).all()
    emg_changed = x.clone()
    emg_changed[:, 3] = torch.randn(B, N * 6, P)
    changed = model.modality_embeddings(emg_changed, channel_valid, patch_valid, channel_modality)
    torch.testing.assert_close(changed["BAS"], embeddings["BAS"])
    torch.testing.assert_close(changed["RESP"], embeddings["RESP"])
    assert not torch.allclose(changed["EMG"][1:], embeddings["EMG"][1:])


def test_registry_builds_sleep_models() -> None:
    with pytest.raises(KeyError, match="unknown set_transformer_staging parameter.*lr"):
        build_model("set_transformer_staging", preset="small", lr=1)
    staging = build_model("set_transformer_staging", preset="small", d_model=32, lstm_hidden=4, epoch_heads=2)
    assert isinstance(staging, SleepStagingModel) and staging.encoder.cfg.d_model == 32
    assert staging.classifier.out_features == 5
    diagnosis = build_model("set_transformer_diagnosis", n_outcomes=4, preset="small")
    assert isinstance(diagnosis, SleepDiagnosisModel) and diagnosis.head[-1].out_features == 4
    contrastive = build_model("set_transformer_contrastive", preset="small", modalities=["BAS", "EKG"])
    assert isinstance(contrastive, ContrastivePretrainer) and contrastive.modalities == ("BAS", "EKG")


def test_staging_dp_step_and_exact_grad_samples() -> None:
    x, channel_valid, epoch_valid = _night()
    stages = torch.randint(0, 5, (B, N))
    assert_one_dp_step(_staging(dropout=0.1).train(), (x, channel_valid, epoch_valid, stages), _staging_loss)
    assert_grad_samples_exact(_staging(), (x, channel_valid, epoch_valid, stages), _staging_loss)


def test_diagnosis_dp_step_and_exact_grad_samples() -> None:
    x, channel_valid, epoch_valid = _night()
    demographics = torch.randn(B, 2)
    batch = (x, channel_valid, epoch_valid, demographics)
    assert_one_dp_step(_diagnosis().train(), batch, lambda m, b: m(*b).pow(2).sum())
    assert_grad_samples_exact(_diagnosis(), batch, lambda m, b: m(*b).pow(2).sum())


def test_contrastive_dp_step() -> None:
    torch.manual_seed(0)
    model = ContrastivePretrainer(CFG).train()
    x, channel_valid, epoch_valid = _night()
    patch_valid = epoch_valid.repeat_interleave(6, dim=1)
    modality = torch.tensor([0, 1, 2, 3])

    def agreement_loss(m: nn.Module, b: list[torch.Tensor]) -> torch.Tensor:
        # per-sample objective (a sample's own modalities agree), so clipping bounds each sample
        embeddings = F.normalize(m(*b, modality), dim=-1)  # (B, M, D)
        return -(embeddings[:, 0] * embeddings[:, 1]).sum()

    assert_one_dp_step(model, (x, channel_valid, patch_valid), agreement_loss)


def test_empty_batch_runs() -> None:
    x, channel_valid, epoch_valid = _night()
    stages = torch.randint(0, 5, (B, N))
    assert_empty_batch_runs(_staging(), (x, channel_valid, epoch_valid, stages), _staging_loss)
    batch = (x, channel_valid, epoch_valid, torch.randn(B, 2))
    assert_empty_batch_runs(_diagnosis(), batch, lambda m, b: m(*b).pow(2).sum())


def test_contrastive_epoch_embeddings_exact_grad_samples_under_the_pretraining_loss() -> None:
    from shared.losses.contrastive import within_sample_info_nce

    torch.manual_seed(0)
    model = ContrastivePretrainer(CFG, projection_dim=8).eval()
    x, channel_valid, epoch_valid = _night()
    modality = torch.tensor([0, 1, 2, 3])

    def pretraining_loss(m: nn.Module, b: list[torch.Tensor]) -> torch.Tensor:
        net = getattr(m, "_module", m)  # as SleepStagingTask.pretrain_loss: the hooks sit on the inner layers
        z = net.epoch_embeddings(b[0], b[1], b[2], modality)  # (B, M, N, D)
        present = net.modality_present(b[1], modality)
        return within_sample_info_nce(z, present, b[2], net.modalities) * len(b[0])  # a sum of per-sample terms

    z = model.epoch_embeddings(x, channel_valid, epoch_valid, modality)
    assert z.shape == (B, 4, N, 8)
    assert z[0, 3].abs().sum() == 0 and z[1, :, 2:].abs().sum() == 0  # sample 0 lacks EMG; sample 1 has 2 epochs
    assert_grad_samples_exact(model, (x, channel_valid, epoch_valid), pretraining_loss)
