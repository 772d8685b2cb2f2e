import pytest
import torch
import torch.nn.functional as F

from shared.models.registry import build_model
from shared.models.tabular_mlp import TabularMLP, TabularMLPConfig, build_tabular_mlp
from tests.shared.models.opacus_checks import assert_empty_batch_runs, assert_grad_samples_exact, assert_one_dp_step

N_FEATURES = 10


def _model(**overrides: object) -> TabularMLP:
    torch.manual_seed(0)
    return build_tabular_mlp(n_features=N_FEATURES, **({"hidden": [8, 6], "dropout": 0.0} | overrides)).eval()


def _bce(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.binary_cross_entropy_with_logits(model(x), y, reduction="sum")


def _batch(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(n, N_FEATURES), (torch.rand(n) < 0.5).float()


def test_shapes_and_layer_layout() -> None:
    x, _ = _batch()
    assert _model()(x).shape == (5,)
    assert _model(n_outputs=5)(x).shape == (5, 5)
    layers = [type(m).__name__ for m in _model().body]
    assert layers == ["Linear", "LayerNorm", "ReLU", "Dropout"] * 2
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in _model().modules())


def test_rows_are_independent() -> None:
    x, _ = _batch()
    model = _model()
    torch.testing.assert_close(model(x)[2:3], model(x[2:3]))


def test_registry_builds_and_refuses_unknown_keys() -> None:
    with pytest.raises(KeyError, match="batch_size"):
        build_model("tabular_mlp", n_features=N_FEATURES, hidden=[4], batch_size=32)
    model = build_model("tabular_mlp", n_features=N_FEATURES, hidden=[4])
    assert isinstance(model, TabularMLP) and model.cfg == TabularMLPConfig(N_FEATURES, hidden=[4])
    assert sum(p.numel() for p in model.parameters()) == (10 * 4 + 4) + 2 * 4 + (4 + 1)


def test_one_dp_sgd_step_and_exact_grad_samples() -> None:
    batch = _batch()
    assert_one_dp_step(_model(dropout=0.1).train(), batch, _bce)
    assert_grad_samples_exact(_model(), batch, _bce)


def test_empty_batch_runs() -> None:
    assert_empty_batch_runs(_model(), _batch(2), _bce)
