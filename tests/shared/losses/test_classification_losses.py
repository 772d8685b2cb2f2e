import copy
import math

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from torch import nn

from shared.losses.classification import (
    CrossEntropy,
    FocalLoss,
    MultiClassFocalLoss,
    WeightedBCEWithLogits,
)


def test_focal_hand_values() -> None:
    logits = torch.tensor([0.0, 0.0, math.log(3.0)])  # p = 0.5, 0.5, 0.75
    targets = torch.tensor([1.0, 0.0, 1.0])
    per_sample = FocalLoss(gamma=2.0, reduction="none")(logits, targets)
    expected = [0.25 * math.log(2), 0.25 * math.log(2), 0.25**2 * -math.log(0.75)]
    torch.testing.assert_close(per_sample, torch.tensor(expected))
    weighted = FocalLoss(gamma=2.0, alpha=0.25, reduction="none")(logits, targets)
    torch.testing.assert_close(weighted, torch.tensor(expected) * torch.tensor([0.25, 0.75, 0.25]))


def test_focal_gamma_zero_is_bce_and_focuses_on_hard_examples() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(8, 3) * 3, (torch.rand(8, 3) < 0.4).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, targets), bce)
    easy_vs_hard = torch.tensor([4.0, -4.0]), torch.tensor([1.0, 1.0])  # confident right, confident wrong
    ratio = FocalLoss(gamma=2.0, reduction="none")(*easy_vs_hard) / F.binary_cross_entropy_with_logits(
        *easy_vs_hard, reduction="none"
    )
    assert ratio[0] < 1e-3 and ratio[1] > 0.96


def test_weighted_bce_matches_torch() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(10, 2), (torch.rand(10, 2) < 0.3).float()
    pos_weight = torch.tensor([3.0, 0.5])
    expected = nn.BCEWithLogitsLoss(pos_weight=pos_weight)(logits, targets)
    torch.testing.assert_close(WeightedBCEWithLogits(pos_weight)(logits, targets.long()), expected)


def test_configured_loss_needs_a_public_pos_weight_and_names_bad_parameters() -> None:
    from shared.errors import InputError
    from shared.losses.registry import build_configured_loss

    loss = build_configured_loss("weighted_bce", {"pos_weight": 3.0}, "run.yaml")
    torch.testing.assert_close(loss.pos_weight, torch.tensor(3.0))
    for params in ({}, {"pos_weight": "auto"}, {"pos_weight": -1.0}):
        with pytest.raises(InputError, match="train.loss_params.pos_weight"):
            build_configured_loss("weighted_bce", params, "run.yaml")
    with pytest.raises(InputError, match="run.yaml.*train.loss_params"):
        build_configured_loss("focal", {"gama": 2.0}, "run.yaml")


def test_cross_entropy_plain_and_weighted() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 3, 3])
    torch.testing.assert_close(CrossEntropy()(logits, targets), F.cross_entropy(logits, targets))
    weight = torch.tensor([1.0, 2.0, 0.5, 0.25])
    per_sample = F.cross_entropy(logits, targets, reduction="none") * weight[targets]
    ours = CrossEntropy(weight)(logits, targets)
    torch.testing.assert_close(ours, per_sample.mean())  # plain mean: no batch-weight normalizer
    assert not torch.isclose(ours, F.cross_entropy(logits, targets, weight=weight))


def test_sequence_cross_entropy_averages_valid_steps_per_sample() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5)  # (B, S, C)
    targets = torch.tensor([[0, 1, 2, 3], [4, 4, -100, -100], [-100, -100, -100, -100]])
    per_sample = CrossEntropy(reduction="none")(logits, targets)
    torch.testing.assert_close(per_sample[0], F.cross_entropy(logits[0], targets[0]))
    torch.testing.assert_close(per_sample[1], F.cross_entropy(logits[1, :2], targets[1, :2]))
    assert per_sample[2] == 0.0
    torch.testing.assert_close(CrossEntropy()(logits, targets), per_sample.sum() / 3)
    focal = MultiClassFocalLoss(gamma=0.0, reduction="none")(logits, targets)
    torch.testing.assert_close(focal, per_sample)


def test_multiclass_focal() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(7, 3), torch.tensor([0, 1, 2, 0, 1, 2, 2])
    weight = torch.tensor([0.5, 1.0, 2.0])
    torch.testing.assert_close(
        MultiClassFocalLoss(gamma=0.0, weight=weight)(logits, targets), CrossEntropy(weight)(logits, targets)
    )
    log_p = F.log_softmax(logits, dim=-1)[torch.arange(7), targets]
    expected = (-weight[targets] * (1 - log_p.exp()) ** 2 * log_p).mean()
    torch.testing.assert_close(MultiClassFocalLoss(gamma=2.0, weight=weight)(logits, targets), expected)


def test_unknown_reduction() -> None:
    with pytest.raises(ValueError, match="unknown reduction"):
        FocalLoss(reduction="batchmean")(torch.zeros(2), torch.zeros(2))


_LOSSES = [
    (FocalLoss(gamma=2.0, alpha=0.25), "binary"),
    (WeightedBCEWithLogits(4.0), "binary"),
    (CrossEntropy(torch.tensor([1.0, 3.0, 0.5])), "multiclass"),
    (MultiClassFocalLoss(gamma=2.0, weight=torch.tensor([1.0, 3.0, 0.5])), "multiclass"),
]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize(("loss_fn", "kind"), _LOSSES)
def test_opacus_per_sample_gradients_are_each_samples_own(loss_fn: nn.Module, kind: str) -> None:
    """With a plain mean, Opacus' grad_sample of sample i is the gradient of loss_i alone."""
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    if kind == "binary":
        model, y = nn.Linear(4, 1), (torch.rand(6) < 0.5).float()
    else:
        model, y = nn.Linear(4, 3), torch.tensor([0, 1, 2, 1, 0, 2])

    def outputs(module: nn.Module, rows: slice) -> torch.Tensor:
        out = module(x[rows])
        return out.squeeze(-1) if kind == "binary" else out

    reference = copy.deepcopy(model)
    wrapped = GradSampleModule(model, loss_reduction="mean")
    loss_fn(outputs(wrapped, slice(None)), y).backward()
    for i in range(6):
        alone = loss_fn(outputs(reference, slice(i, i + 1)), y[i : i + 1])
        grad = torch.autograd.grad(alone, reference.weight)[0]
        torch.testing.assert_close(model.weight.grad_sample[i], grad)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_torch_weighted_mean_ce_is_not_per_sample() -> None:
    """Why CrossEntropy exists: torch divides by the batch's total weight, coupling the samples."""
    torch_weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0, 0.5]))
    with pytest.raises(AssertionError):
        test_opacus_per_sample_gradients_are_each_samples_own(torch_weighted, "multiclass")
