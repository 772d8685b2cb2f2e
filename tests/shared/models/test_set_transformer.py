import torch
from torch import nn

from shared.models.set_transformer import SetTransformer, SetTransformerConfig, TokenGroupNorm
from tests.shared.models.opacus_checks import (
    assert_empty_batch_runs,
    assert_grad_samples_exact,
    assert_one_dp_step,
)

B, C, S, P = 3, 4, 5, 640


def _encoder(**overrides: object) -> SetTransformer:
    torch.manual_seed(0)
    return SetTransformer(SetTransformerConfig.small(**({"dropout": 0.0} | overrides))).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(B, C, S, P)
    channel_valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    patch_valid = torch.arange(S)[None, :] < torch.tensor([[5], [3], [4]])
    return x, channel_valid, patch_valid


def _loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    return model(*batch)["pooled"].pow(2).sum()


def test_seed_defaults_have_about_4_44m_parameters() -> None:
    cfg = SetTransformerConfig()
    assert (cfg.patch_samples, cfg.kernel_size, len(cfg.conv_channels), cfg.conv_channels[-1]) == (
        640,
        5,
        6,
        128,
    )
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads) == (128, 6, 8)
    assert cfg.token_length() == 10
    n_params = sum(p.numel() for p in SetTransformer(cfg).parameters())
    assert abs(n_params - 4.44e6) / 4.44e6 < 0.10, n_params


def test_output_shapes() -> None:
    out = _encoder()(*_inputs())
    assert out["pooled"].shape == (B, 64)
    assert out["sequence"].shape == (B, S, 64)
    assert out["channel_weights"].shape == (B, S, 2, C)
    assert out["temporal_weights"].shape == (B, 2, S)


def test_missing_channel_gets_zero_weight_and_its_values_do_not_matter() -> None:
    model = _encoder()
    x, channel_valid, patch_valid = _inputs()
    out = model(x, channel_valid, patch_valid)
    weights = out["channel_weights"]  # (B, S, H, C)
    assert (weights[0, :, :, 3] == 0).all() and (weights[2, :, :, 0] == 0).all()
    torch.testing.assert_close(weights.sum(-1)[0], torch.ones(S, 2))
    garbage = x.clone()
    garbage[0, 3] = 1e6 * torch.randn(S, P)
    garbage[2, 0] = float("nan")
    changed = model(garbage, channel_valid, patch_valid)
    for key in out:
        torch.testing.assert_close(changed[key], out[key])


def test_padded_patches_get_zero_weight_and_do_not_change_the_sample() -> None:
    model = _encoder()
    x, channel_valid, patch_valid = _inputs()
    out = model(x, channel_valid, patch_valid)
    assert (out["temporal_weights"][1, :, 3:] == 0).all()
    assert (out["sequence"][1, 3:] == 0).all()
    garbage = x.clone()
    garbage[1, :, 3:] = float("nan")
    torch.testing.assert_close(model(garbage, channel_valid, patch_valid)["pooled"], out["pooled"])
    alone = model(x[1:2, :, :3], channel_valid[1:2], patch_valid[1:2, :3])
    torch.testing.assert_close(alone["pooled"], out["pooled"][1:2])


def test_channels_are_a_set() -> None:
    model = _encoder()
    x, channel_valid, patch_valid = _inputs()
    order = torch.tensor([2, 0, 3, 1])
    out = model(x, channel_valid, patch_valid)
    permuted = model(x[:, order], channel_valid[:, order], patch_valid)
    torch.testing.assert_close(permuted["pooled"], out["pooled"])
    torch.testing.assert_close(permuted["channel_weights"], out["channel_weights"][..., order])


def test_token_group_norm_normalises_each_row_on_its_own() -> None:
    torch.manual_seed(0)
    norm = TokenGroupNorm(2, 4)
    reference = nn.GroupNorm(2, 4)
    x = torch.randn(2, 4, 3, 7) * torch.tensor([1.0, 10.0, 100.0])[None, None, :, None]
    rows = [reference(x[:, :, r : r + 1, :]) for r in range(3)]
    torch.testing.assert_close(norm(x), torch.cat(rows, dim=2))


def test_config_from_dict_preset_and_overrides() -> None:
    cfg = SetTransformerConfig.from_dict(
        {"preset": "small", "d_model": 32, "conv_channels": [8, 16], "lr": 1e-3}
    )
    assert cfg == SetTransformerConfig.small(d_model=32, conv_channels=(8, 16))
    assert SetTransformerConfig.from_dict({"n_layers": 3}) == SetTransformerConfig(n_layers=3)


def test_one_dp_sgd_step() -> None:
    model = _encoder(dropout=0.1).train()
    assert_one_dp_step(model, _inputs(), _loss)


def test_opacus_grad_samples_match_per_sample_autograd() -> None:
    assert_grad_samples_exact(_encoder(), _inputs(), _loss)


def test_empty_batch_runs() -> None:
    assert_empty_batch_runs(_encoder(), _inputs(), _loss)
