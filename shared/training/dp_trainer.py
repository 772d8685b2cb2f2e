"""The local trainer: a model, a dataset and Opacus DP-SGD. Importable without Flower.

The sample rate is the *logical* (expected) batch size over the dataset size; Poisson sampling
draws logical batches and BatchMemoryManager splits them into physical batches of at most
`max_physical_batch_size` without changing what the accountant sees.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from shared.training.devices import autocast_for, configure_precision

LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class TrainSettings:
    epochs: int = 1
    expected_batch_size: int = 32
    max_physical_batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    noise_multiplier: float | None = 1.0  # None = no DP (plain SGD on shuffled batches)
    max_grad_norm: float = 1.0
    grad_sample_mode: str = "hooks"
    device: str = "cpu"
    precision: str = "fp32"
    proximal_mu: float = 0.0  # FedProx: mu/2 * ||w - w_global||^2
    seed: int | None = None


@dataclass
class TrainResult:
    mean_loss: float
    steps: int  # logical optimizer steps (what the accountant counts)
    sample_rate: float
    noise_multiplier: float | None
    num_examples: int


def steps_per_epoch(num_examples: int, expected_batch_size: int) -> int:
    """Poisson batches per epoch: Opacus' DPDataLoader draws as many as the loader it wraps has
    batches, ceil(n / batch size)."""
    return max(1, math.ceil(num_examples / max(1, expected_batch_size)))


def sample_rate_for(num_examples: int, expected_batch_size: int) -> float:
    """The rate Opacus' DPDataLoader really samples at: 1 / (batches of the wrapped loader).

    That is expected_batch_size / n when the batch size divides n and slightly less otherwise; the
    accountant must see this rate together with `steps_per_epoch` steps (B / n with int(n / B)
    steps, as before, under-counted the steps whenever B did not divide n).
    """
    return 1.0 / steps_per_epoch(num_examples, expected_batch_size)


def _optimizer(params: list[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=0.9, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)


def unwrap_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Opacus' GradSampleModule prefixes every key with `_module.`: strip it."""
    return {k.removeprefix("_module."): v.detach().clone() for k, v in module.state_dict().items()}


def train_model(model: nn.Module, dataset: Dataset, loss_fn: LossFn, s: TrainSettings) -> TrainResult:
    """Trains `model` in place (its weights are replaced by the trained ones)."""
    device = torch.device(s.device)
    configure_precision(s.precision)
    if s.seed is not None:
        torch.manual_seed(s.seed)
    n = len(dataset)  # type: ignore[arg-type]
    work = copy.deepcopy(model).to(device).train()  # Opacus hooks stay on the copy
    params = [p for p in work.parameters() if p.requires_grad]
    optimizer = _optimizer(params, s)
    global_params = [p.detach().clone() for p in params] if s.proximal_mu > 0 else None
    pin = device.type == "cuda"
    q = sample_rate_for(n, s.expected_batch_size)

    if s.noise_multiplier is not None:
        from opacus import PrivacyEngine
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        # Opacus samples at 1 / len(loader) = q and draws len(loader) = steps_per_epoch batches
        loader = DataLoader(dataset, batch_size=max(1, min(s.expected_batch_size, n)), pin_memory=pin)
        with warnings.catch_warnings():
            # secure_mode (torchcsprng) is not installable here; Opacus warns on every engine.
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            engine = PrivacyEngine(accountant="rdp")
            work, optimizer, loader = engine.make_private(
                module=work,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=s.noise_multiplier,
                max_grad_norm=s.max_grad_norm,
                poisson_sampling=True,
                grad_sample_mode=s.grad_sample_mode,
            )
    else:
        loader = DataLoader(dataset, batch_size=s.expected_batch_size, shuffle=True, pin_memory=pin)

    total = torch.zeros((), device=device)
    batches = 0
    logical_steps = 0
    for _ in range(s.epochs):
        if s.noise_multiplier is not None and s.max_physical_batch_size:
            ctx = BatchMemoryManager(
                data_loader=loader, max_physical_batch_size=s.max_physical_batch_size, optimizer=optimizer
            )
        else:
            ctx = _NoSplit(loader)
        with ctx as physical_loader:
            for batch in physical_loader:
                batch = [t.to(device, non_blocking=pin) for t in batch]
                optimizer.zero_grad(set_to_none=True)
                with autocast_for(s.precision, device):
                    loss = loss_fn(work, batch)
                if global_params is not None:
                    prox = sum(((p - g) ** 2).sum() for p, g in zip(params, global_params))
                    loss = loss + 0.5 * s.proximal_mu * prox
                with warnings.catch_warnings():  # Opacus' hooks fire on inputs without grad: expected
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                optimizer.step()
                logical_steps += _is_logical_step(optimizer)
                # Poisson sampling can draw an empty batch: Opacus still noises and counts that
                # step; its loss (NaN, mean of nothing) is kept out of the running mean.
                if batch[0].shape[0] > 0:
                    total += loss.detach().float()  # no host sync inside the loop
                    batches += 1
    model.load_state_dict(unwrap_state_dict(work))
    mean_loss = float(total / max(1, batches))
    return TrainResult(mean_loss if math.isfinite(mean_loss) else float("nan"), logical_steps, q, s.noise_multiplier, n)


def _is_logical_step(optimizer: torch.optim.Optimizer) -> int:
    """With BatchMemoryManager only the last physical batch of a logical batch really steps."""
    skipped = getattr(optimizer, "_is_last_step_skipped", False)
    return 0 if skipped else 1


class _NoSplit:
    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __enter__(self) -> DataLoader:
        return self.loader

    def __exit__(self, *exc: object) -> None:
        return None
