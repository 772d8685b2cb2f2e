import pytest
import torch
from torch.utils.data import TensorDataset

from shared.errors import InputError
from shared.training.devices import resolve_device
from shared.training.dp_trainer import TrainSettings, sample_rate_for, steps_per_epoch, train_model


def _setup(n=120):
    torch.manual_seed(0)
    x = torch.randn(n, 4)
    y = (x[:, 0] > 0).float()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def loss(m, b):
        return torch.nn.functional.binary_cross_entropy_with_logits(m(b[0]).squeeze(-1), b[1])

    return model, TensorDataset(x, y), loss


def test_dp_training_changes_weights_and_counts_logical_steps():
    model, ds, loss = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    res = train_model(model, ds, loss, TrainSettings(epochs=2, expected_batch_size=30, noise_multiplier=1.0, seed=1))
    assert res.steps == 2 * steps_per_epoch(120, 30) == 8
    assert res.sample_rate == pytest.approx(0.25)  # 1 / ceil(120 / 30)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not any(k.startswith("_module") for k in model.state_dict())


def test_accounted_rate_and_steps_are_what_opacus_runs_when_the_batch_does_not_divide_n():
    model, ds, loss = _setup(n=130)
    res = train_model(model, ds, loss, TrainSettings(epochs=2, expected_batch_size=30, noise_multiplier=1.0, seed=1))
    assert steps_per_epoch(130, 30) == 5 and res.steps == 10  # Opacus draws ceil(130 / 30) batches per epoch
    assert res.sample_rate == pytest.approx(1 / 5)
    assert steps_per_epoch(20, 30) == 1 and sample_rate_for(20, 30) == 1.0


def test_batch_memory_manager_keeps_logical_steps():
    model, ds, loss = _setup()
    capped = train_model(model, ds, loss, TrainSettings(epochs=1, expected_batch_size=60, max_physical_batch_size=8,
                                                       noise_multiplier=1.0, seed=1))
    model2, ds2, loss2 = _setup()
    plain = train_model(model2, ds2, loss2, TrainSettings(epochs=1, expected_batch_size=60, noise_multiplier=1.0, seed=1))
    assert capped.steps == plain.steps == steps_per_epoch(120, 60)
    assert capped.sample_rate == plain.sample_rate


def test_non_dp_training_learns():
    model, ds, loss = _setup()
    first = train_model(model, ds, loss, TrainSettings(epochs=1, expected_batch_size=16, noise_multiplier=None, lr=1e-2))
    later = train_model(model, ds, loss, TrainSettings(epochs=5, expected_batch_size=16, noise_multiplier=None, lr=1e-2))
    assert later.mean_loss < first.mean_loss


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(InputError) as err:
            resolve_device("cuda", "site.yaml", "device")
        assert "site.yaml: device" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError):
        resolve_device("tpu")
