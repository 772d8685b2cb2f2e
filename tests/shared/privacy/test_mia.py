import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.mia import dp_auc_bound, loss_threshold_attack, membership_audit, membership_table, per_example_losses
from shared.training.dp_trainer import TrainSettings, sample_rate_for, steps_per_epoch, train_model


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 24, generator=g)
    y = (torch.rand(n, generator=g) < 0.5).float()  # labels carry no signal: only memorising fits them
    return TensorDataset(x, y)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 1))


def _forward(model, batch):
    return model(batch[0]).squeeze(-1)


def _targets(batch):
    return batch[-1]


def _loss(model, batch):
    return nn.functional.binary_cross_entropy_with_logits(_forward(model, batch), batch[-1])


def _auc(model, members, non_members, epsilon=None, delta=None):
    losses = [per_example_losses(model, d, "binary", _forward, _targets, _loss) for d in (members, non_members)]
    return membership_audit(*losses, epsilon=epsilon, delta=delta)


def test_an_overfit_model_leaks_membership_and_a_dp_model_does_not():
    members, non_members = _data(128, 1), _data(128, 2)
    overfit = _model()
    train_model(overfit, members, _loss, TrainSettings(epochs=40, expected_batch_size=32, lr=1e-2, noise_multiplier=None,
                                                        seed=0))
    epochs, delta, noise = 10, 1e-5, 8.0
    steps = epochs * steps_per_epoch(len(members), 32)
    epsilon = epsilon_opacus([Mechanism(noise, sample_rate_for(len(members), 32), steps)], delta)
    assert epsilon <= 1.0
    private = _model()
    train_model(private, members, _loss, TrainSettings(epochs=epochs, expected_batch_size=32, lr=3e-3,
                                                        noise_multiplier=noise, max_grad_norm=1.0, seed=0))
    leaky, dp = _auc(overfit, members, non_members), _auc(private, members, non_members, epsilon=epsilon, delta=delta)
    assert leaky.auc > 0.9 and leaky.member_loss_mean < leaky.non_member_loss_mean
    assert dp.auc < 0.65 and leaky.auc - dp.auc > 0.25
    assert dp.auc <= dp.auc_bound < np.e / (1 + np.e)  # epsilon <= 1 allows an AUC of at most 0.731
    assert "attack AUC" in membership_table(dp) and "within it" in membership_table(dp)


def test_attack_auc_and_advantage_on_known_losses():
    auc, advantage = loss_threshold_attack(np.array([0.1, 0.2, 0.3]), np.array([0.25, 0.4, 0.5]))
    assert auc == pytest.approx(8 / 9) and advantage == pytest.approx(2 / 3)
    assert loss_threshold_attack(np.ones(4), np.ones(4))[0] == 0.5


def test_dp_bound_is_e_eps_over_one_plus_e_eps_without_delta_and_grows_with_delta():
    for eps in (0.1, 1.0, 3.0):
        assert dp_auc_bound(eps, 0.0) == pytest.approx(np.exp(eps) / (1 + np.exp(eps)), abs=1e-5)
    assert dp_auc_bound(1.0, 0.05) > dp_auc_bound(1.0, 0.0)
    assert dp_auc_bound(50.0, 0.0) == pytest.approx(1.0, abs=1e-4)
