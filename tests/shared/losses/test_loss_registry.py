import math

import pytest
import torch
from torch import nn

from shared.losses import classification
from shared.losses.registry import build_loss, loss_names
from shared.losses.survival import CoxPHLoss
from shared.losses.temporal import TemporalAwareBCE


def test_names_build_the_right_losses() -> None:
    assert loss_names() == sorted(
        ["bce", "weighted_bce", "focal", "temporal_bce", "ce", "weighted_ce", "focal_ce", "coxph"]
    )
    assert isinstance(build_loss("bce"), nn.BCEWithLogitsLoss)
    assert isinstance(build_loss("weighted_bce", pos_weight=3.0), classification.WeightedBCEWithLogits)
    focal = build_loss("focal", gamma=1.5, alpha=0.25)
    assert isinstance(focal, classification.FocalLoss) and (focal.gamma, focal.alpha) == (1.5, 0.25)
    temporal = build_loss("temporal_bce", lam=2.0, tau=12.0)
    assert isinstance(temporal, TemporalAwareBCE) and (temporal.lam, temporal.tau) == (2.0, 12.0)
    ce = build_loss("ce")
    assert isinstance(ce, classification.CrossEntropy) and ce.weight is None
    weighted = build_loss("weighted_ce", weight=[1.0, 2.0])
    assert isinstance(weighted, classification.CrossEntropy) and weighted.weight.tolist() == [1.0, 2.0]
    assert isinstance(build_loss("focal_ce", gamma=2.0), classification.MultiClassFocalLoss)
    coxph = build_loss("coxph", ties="efron")
    assert isinstance(coxph, CoxPHLoss) and coxph.ties == "efron"


def test_built_losses_compute() -> None:
    logits, targets = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    # default gamma = 2: (1 - p_t)^2 * -log(p_t) with p_t = 0.5, then p_t = 1 - sigmoid(2)
    sigmoid_2 = 1 / (1 + math.exp(-2.0))
    expected_focal = (0.25 * math.log(2) + sigmoid_2**2 * -math.log(1 - sigmoid_2)) / 2
    assert build_loss("focal")(logits, targets).item() == pytest.approx(expected_focal, abs=1e-6)
    risk, time, event = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])
    # event 1: log(e^1 / (e^1 + e^0)); event 2: risk set {2} alone -> 0
    expected = -(1.0 - torch.logsumexp(torch.tensor([1.0, 0.0]), 0)) / 2
    torch.testing.assert_close(build_loss("coxph")(risk, time, event), expected)


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown loss 'dice'.*bce, ce, coxph, focal, focal_ce"):
        build_loss("dice")
    with pytest.raises(TypeError):
        build_loss("weighted_ce")  # class weights are required
    with pytest.raises(TypeError):
        build_loss("focal", gama=2.0)
