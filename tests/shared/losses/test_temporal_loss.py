import copy
import math

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from torch import nn

from shared.losses.temporal import TemporalAwareBCE, recency_weights

HOURS = torch.tensor([[0.0, 24.0, 99.0], [48.0, 0.0, 0.0], [5.0, 5.0, 5.0], [-2.0, 0.0, 0.0]])
MASK = torch.tensor([[True, True, False], [True, False, False], [False, False, False], [True, False, False]])


def test_recency_weights_formula() -> None:
    weights = recency_weights(HOURS, MASK, lam=1.0, tau=24.0)
    expected = [
        1 + (1 + math.exp(-1)) / 2,  # events at the end and 24 h before; the padded 99 h ignored
        1 + math.exp(-2),  # one event 48 h before the end
        1.0,  # no events
        2.0,  # an event after the end counts as at the end (hours clamped at 0)
    ]
    torch.testing.assert_close(weights, torch.tensor(expected))
    tripled = recency_weights(HOURS, MASK, lam=3.0, tau=24.0)
    torch.testing.assert_close(tripled, 1 + 3 * (torch.tensor(expected) - 1))


def test_recent_events_weigh_more_within_bounds() -> None:
    hours = torch.tensor([[0.0], [6.0], [24.0], [240.0]])
    weights = recency_weights(hours, torch.ones(4, 1, dtype=torch.bool), lam=1.0, tau=24.0)
    assert torch.all(weights[:-1] > weights[1:])
    assert weights[0] == 2.0 and 1.0 < weights[-1] < 1.0001


def test_temporal_bce_value_and_lambda_zero() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(4), torch.tensor([1.0, 0.0, 1.0, 0.0])
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = TemporalAwareBCE()(logits, targets, HOURS, MASK)
    torch.testing.assert_close(loss, (recency_weights(HOURS, MASK) * bce).mean())
    torch.testing.assert_close(TemporalAwareBCE(lam=0.0)(logits, targets, HOURS, MASK), bce.mean())
    two_labels = logits[:, None].repeat(1, 2), targets[:, None].repeat(1, 2)  # (B, K=2)
    multi_label = TemporalAwareBCE(reduction="none")(*two_labels, HOURS, MASK)
    assert multi_label.shape == (4, 2)
    torch.testing.assert_close(multi_label[:, 1], recency_weights(HOURS, MASK) * bce)
    with pytest.raises(ValueError, match="tau"):
        TemporalAwareBCE(tau=0.0)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_per_sample_gradients_are_each_samples_own() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 3), torch.tensor([1.0, 0.0, 1.0, 0.0])
    model = nn.Linear(3, 1)
    reference = copy.deepcopy(model)
    loss_fn = TemporalAwareBCE(lam=2.0, tau=12.0)
    loss_fn(GradSampleModule(model)(x).squeeze(-1), y, HOURS, MASK).backward()
    for i in range(4):
        rows = slice(i, i + 1)
        alone = loss_fn(reference(x[rows]).squeeze(-1), y[rows], HOURS[rows], MASK[rows])
        expected = torch.autograd.grad(alone, reference.weight)[0]
        torch.testing.assert_close(model.weight.grad_sample[i], expected)
