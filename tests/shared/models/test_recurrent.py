import torch
from opacus.validators import ModuleValidator

from shared.models.recurrent import MaskedBiLSTM, reverse_valid_prefix
from tests.shared.models.opacus_checks import assert_grad_samples_exact


def test_reverse_valid_prefix_reverses_within_length_and_is_self_inverse() -> None:
    x = torch.arange(8.0).view(2, 4)[..., None].expand(2, 4, 3)  # (B, T, D)
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    reversed_x = reverse_valid_prefix(x, valid)
    assert reversed_x[:, :, 0].tolist() == [[2.0, 1.0, 0.0, 3.0], [7.0, 6.0, 5.0, 4.0]]
    torch.testing.assert_close(reverse_valid_prefix(reversed_x, valid), x)


def test_bilstm_output_ignores_padding() -> None:
    torch.manual_seed(0)
    lstm = MaskedBiLSTM(3, 5)
    x = torch.randn(2, 6, 3)
    valid = torch.arange(6)[None, :] < torch.tensor([[6], [4]])
    out = lstm(x, valid)
    assert out.shape == (2, 6, 10)
    assert (out[1, 4:] == 0).all()
    garbage = x.clone()
    garbage[1, 4:] = float("nan")
    torch.testing.assert_close(lstm(garbage, valid), out)
    torch.testing.assert_close(lstm(x[1:, :4], valid[1:, :4]), out[1:, :4])


def test_bilstm_passes_validator_and_has_exact_grad_samples() -> None:
    torch.manual_seed(0)
    lstm = MaskedBiLSTM(3, 4)
    assert ModuleValidator.validate(lstm, strict=True) == []
    x = torch.randn(3, 5, 3)
    valid = torch.arange(5)[None, :] < torch.tensor([[5], [2], [4]])
    assert_grad_samples_exact(lstm, (x, valid), lambda m, b: m(*b).pow(2).sum())
