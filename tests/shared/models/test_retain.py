import pytest
import torch
import torch.nn.functional as F

from shared.models.registry import build_model
from shared.models.retain import Retain, RetainConfig, build_retain
from tests.shared.models.opacus_checks import (
    assert_empty_batch_runs,
    assert_grad_samples_exact,
    assert_one_dp_step,
)

N_FEATURES = 5


def _model(**overrides: object) -> Retain:
    torch.manual_seed(0)
    cfg = {"emb_dim": 8, "alpha_hidden": 6, "beta_hidden": 7, "dropout": 0.0} | overrides
    return build_retain(n_features=N_FEATURES, **cfg).eval()


def _batch(lengths: list[int], steps: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(len(lengths), steps, N_FEATURES)
    valid = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    return x, valid


def _bce(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    x, valid, y = batch
    return F.binary_cross_entropy_with_logits(model(x, valid), y, reduction="sum")


def test_shapes_single_and_multi_output() -> None:
    x, valid = _batch([6, 3, 1, 4])
    logits, alpha, beta = _model().forward_with_attention(x, valid)
    assert logits.shape == (4,) and alpha.shape == (4, 6) and beta.shape == (4, 6, 8)
    assert _model(n_outputs=3)(x, valid).shape == (4, 3)
    assert _model().variable_contributions(x, valid).shape == (4, 6, N_FEATURES)


def test_alpha_sums_to_one_over_valid_visits_and_is_zero_on_padding() -> None:
    x, valid = _batch([6, 3, 1, 4])
    _, alpha, beta = _model().forward_with_attention(x, valid)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(4))
    assert (alpha[~valid] == 0).all() and (alpha[valid] > 0).all()
    assert (beta.abs() <= 1).all()


def test_padding_does_not_change_a_sample() -> None:
    model = _model()
    x, valid = _batch([6, 3, 1, 4])
    garbage = x.clone()
    garbage[~valid] = float("nan")
    logits, alpha, _ = model.forward_with_attention(garbage, valid)
    alone_logits, alone_alpha, _ = model.forward_with_attention(x[1:2, :3], valid[1:2, :3])
    torch.testing.assert_close(logits[1:2], alone_logits)
    torch.testing.assert_close(alpha[1:2, :3], alone_alpha)
    assert torch.isfinite(logits).all()


def test_reverse_time_gru_starts_at_last_valid_visit() -> None:
    """beta_t summarises visits t..last: editing the first visit changes beta_0 only, editing
    the last valid visit changes every beta_t of that sample."""
    model = _model()
    x, valid = _batch([4], steps=6)
    _, _, beta = model.forward_with_attention(x, valid)
    first, last = x.clone(), x.clone()
    first[0, 0] += 1.0
    last[0, 3] += 1.0
    _, _, beta_first = model.forward_with_attention(first, valid)
    _, _, beta_last = model.forward_with_attention(last, valid)
    torch.testing.assert_close(beta_first[0, 1:4], beta[0, 1:4])
    assert not torch.allclose(beta_first[0, 0], beta[0, 0])
    for t in range(4):
        assert not torch.allclose(beta_last[0, t], beta[0, t])


def test_contributions_sum_to_logit_and_vanish_on_padding() -> None:
    model = _model(n_outputs=2)
    x, valid = _batch([6, 3, 1, 4])
    logits = model(x, valid)
    for output in range(2):
        contributions = model.variable_contributions(x, valid, output=output)
        torch.testing.assert_close(contributions.sum(dim=(1, 2)) + model.out.bias[output], logits[:, output])
        assert (contributions[~valid] == 0).all()


def test_registry_builds_and_refuses_unknown_keys() -> None:
    model = build_model("retain", n_features=N_FEATURES, emb_dim=12)
    assert isinstance(model, Retain) and model.cfg == RetainConfig(N_FEATURES, emb_dim=12)
    with pytest.raises(KeyError, match="unknown retain parameter.*emb_dimm"):  # a typo is not silently the default
        build_model("retain", n_features=N_FEATURES, emb_dimm=12)


def test_state_dict_round_trip_predicts_the_same() -> None:
    x, valid = _batch([6, 2])
    model, other = _model(), _model(emb_dim=8)
    torch.nn.init.normal_(other.out.weight)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(x, valid), model(x, valid))


def test_one_dp_sgd_step() -> None:
    x, valid = _batch([6, 3, 1, 4])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert_one_dp_step(_model(dropout=0.1).train(), (x, valid, y), _bce)


def test_opacus_grad_samples_match_per_sample_autograd() -> None:
    x, valid = _batch([6, 3, 1, 4])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert_grad_samples_exact(_model(), (x, valid, y), _bce)


def test_empty_batch_runs() -> None:
    x, valid = _batch([6, 3])
    assert_empty_batch_runs(_model(), (x, valid, torch.ones(2)), _bce)
