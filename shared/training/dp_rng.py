"""Where a site's DP randomness comes from: dedicated torch generators, seeded from the OS CSPRNG.

Poisson masks (Opacus' sampler draws `torch.rand` on the CPU) and Gaussian noise (on the training device)
each get their own `torch.Generator`, created for one round and dropped after it; nothing else (dropout,
initialisation, shuffling without DP) touches them, and their seeds are never stored, logged or sent.

- CPU: torch's CPU generator is MT19937, and `manual_seed` keeps only the low 32 bits of the seed
  (`manual_seed(5)` and `manual_seed(5 + 2**32)` give the same stream), so a secret CPU generator gets
  its whole 624-word state (19,968 bits) from `secrets` through `set_state` instead.
- CUDA: Philox, seeded with 64 bits from `secrets` (its whole seed).

What this does NOT give: MT19937 and Philox are not cryptographic generators. The state is
unpredictable (OS entropy, never derivable from the run config), and the center sees only noised sums
of gradients, never the generator's raw output; a cryptographic guarantee would need a CSPRNG
behind every draw (Opacus `secure_mode` with torchcsprng, which no longer builds for torch 2.x).

`reproducible_seed` (config `privacy.reproducible_noise: true`) seeds both generators from a number the
run config determines: for tests and debugging only. The ledger records it and `fedcare audit` reports
such a run as not private against the center (whoever knows the config can replay the noise).

`gaussian_noise` keeps Opacus' secure-mode care against floating-point attacks on the noise (Holohan &
Braghin 2021, https://arxiv.org/abs/2107.10138): one discarded draw, then the sum of four N(0, std^2)
draws divided by 2 (same distribution, no single float's low bits exposed).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

import torch

SECRET_SEED_BITS = 64  # Philox takes a 64-bit seed; the CPU generator gets its full state instead
_MT_WORDS = 624
# CPU generator state (ATen CPUGeneratorImplStateLegacy): u64 initial seed, i32 left, i32 seeded,
# u64 next, u64 state[624] (32-bit words), then the normal-sampling caches.
_MT_HEADER = struct.Struct("<QiiQ")


@dataclass
class DPRandomness:
    """The generators one round's DP-SGD draws from."""

    sampler: torch.Generator  # CPU: Poisson masks
    noise: torch.Generator  # the training device: Gaussian noise
    reproducible: bool


def _secret_cpu_generator() -> torch.Generator:
    generator = torch.Generator(device="cpu")
    state = bytearray(generator.get_state().numpy().tobytes())
    # left=1: the next draw regenerates the whole state block from the words written here
    _MT_HEADER.pack_into(state, 0, secrets.randbits(64), 1, 1, 0)
    words = struct.unpack(f"<{_MT_WORDS}I", secrets.token_bytes(4 * _MT_WORDS))
    struct.pack_into(f"<{_MT_WORDS}Q", state, _MT_HEADER.size, *words)
    generator.set_state(torch.frombuffer(state, dtype=torch.uint8).clone())
    return generator


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    if seed is not None:
        return torch.Generator(device=device).manual_seed(seed)
    if device.type == "cpu":
        return _secret_cpu_generator()
    return torch.Generator(device=device).manual_seed(secrets.randbits(SECRET_SEED_BITS))


def dp_randomness(device: str | torch.device = "cpu", reproducible_seed: int | None = None) -> DPRandomness:
    """Fresh generators for one round: secret (OS CSPRNG) unless `reproducible_seed` is given."""
    device = torch.device(device)
    noise_seed = None if reproducible_seed is None else reproducible_seed + 1
    return DPRandomness(
        sampler=_generator(torch.device("cpu"), reproducible_seed),
        noise=_generator(device, noise_seed),
        reproducible=reproducible_seed is not None,
    )


def gaussian_noise(like: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, std^2) noise shaped like `like`, drawn as Opacus' secure mode does (see the module docstring)."""
    torch.normal(0.0, std, size=(1, 1), device=like.device, generator=generator)  # discarded
    total = torch.zeros_like(like)
    for _ in range(4):
        total.add_(torch.empty_like(like).normal_(0.0, std, generator=generator))
    return total.div_(2.0)
