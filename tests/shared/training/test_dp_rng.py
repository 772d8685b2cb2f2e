"""DP randomness comes from dedicated, secretly seeded generators: the run's seeds do not determine it,
unless the recorded reproducible switch (TrainSettings.dp_seed) is used."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from shared.training.dp_rng import dp_randomness, gaussian_noise
from shared.training.dp_trainer import TrainSettings, train_model


def test_torch_cpu_generator_keeps_only_32_bits_of_a_seed():
    # why the secret CPU generator is filled through set_state, not manual_seed(secrets.randbits(64))
    a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7 + 2**32)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


def test_secret_generators_differ_every_time_and_ignore_the_global_seed():
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        rng = dp_randomness("cpu")
        assert not rng.reproducible
        draws.append((torch.rand(8, generator=rng.sampler), torch.randn(8, generator=rng.noise)))
    assert not torch.equal(draws[0][0], draws[1][0]) and not torch.equal(draws[0][1], draws[1][1])


def test_reproducible_seed_repeats_and_keeps_sampler_and_noise_apart():
    one, two = dp_randomness("cpu", 11), dp_randomness("cpu", 11)
    assert one.reproducible
    assert torch.equal(torch.rand(8, generator=one.sampler), torch.rand(8, generator=two.sampler))
    assert not torch.equal(torch.rand(8, generator=dp_randomness("cpu", 11).sampler),
                           torch.rand(8, generator=dp_randomness("cpu", 11).noise))


def test_secure_mode_noise_has_the_right_scale():
    noise = gaussian_noise(torch.zeros(200_000), 1.5, dp_randomness("cpu").noise)
    assert abs(float(noise.std()) - 1.5) < 0.02 and abs(float(noise.mean())) < 0.02


def _train(mode: str, dp_seed: int | None) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).float()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def loss(m, b):
        return F.binary_cross_entropy_with_logits(m(b[0]).squeeze(-1), b[1])

    s = TrainSettings(expected_batch_size=16, noise_multiplier=1.0, seed=0, dp_seed=dp_seed, grad_sample_mode=mode)
    train_model(model, TensorDataset(x, y), loss, s)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_same_run_seed_gives_different_dp_training_unless_reproducible():
    for mode in ("hooks", "bookkeeping"):
        assert not torch.equal(_train(mode, None), _train(mode, None)), mode
        assert torch.equal(_train(mode, 5), _train(mode, 5)), mode
