"""The local trainer: a model, a dataset and DP-SGD. Importable without Flower.

The sample rate is q = 1 / ceil(n / expected batch size), as Opacus' DPDataLoader derives it;
Poisson sampling draws logical batches and Opacus' batch splitter cuts them into physical batches
of at most `max_physical_batch_size` without changing what the accountant sees.

Per-sample clipping (TrainSettings.grad_sample_mode):
- "hooks" / "functorch": Opacus' per-sample gradients (GradSampleModule + DPOptimizer);
- "ghost": Opacus' ghost clipping (norms in a first backward, clipped sum in a second);
- "bookkeeping": shared.training.fast_dp.BookkeepingDP, one backward, no per-sample gradients
  kept; same clipping, noise, expected-batch scaling, Poisson sampler and step count as "hooks";
- "auto": "bookkeeping" when the model is built only of layers it supports, else "hooks".
DP randomness (Poisson masks, Gaussian noise) comes from a round's dedicated generators
(shared.training.dp_rng): secret, from the OS CSPRNG, unless `TrainSettings.dp_seed` is set (the
recorded `privacy.reproducible_noise` switch). `seed` seeds torch's global generator for everything
else (dropout, initialisation, shuffling without DP), which the center may well know.
FedProx's proximal gradient mu (w - w_global) is data-independent: under DP it is added after
the noise (Opacus alone would overwrite it with the privatised gradient).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from shared.config_schema import GRAD_SAMPLE_MODES
from shared.training.devices import autocast_for, configure_precision, keep_freed_memory
from shared.training.dp_rng import DPRandomness, dp_randomness
from shared.training.fast_dp import BookkeepingDP

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
    grad_sample_mode: str = "hooks"  # or functorch, ghost, bookkeeping, auto (module docstring)
    device: str = "cpu"
    precision: str = "fp32"
    proximal_mu: float = 0.0  # FedProx: mu/2 * ||w - w_global||^2
    seed: int | None = None  # torch's global generator: dropout, initialisation; never the DP randomness
    dp_seed: int | None = None  # None: DP randomness from the OS CSPRNG; an int only for privacy.reproducible_noise
    # The public size the Poisson sample rate and the noisy mean's divisor come from (a site's released noisy
    # count): q = 1 / ceil(planned_size / B) and divisor planned_size * q whatever the dataset's own size, so
    # neither the rate nor the update's noise scale tells the center the exact size. None: the dataset's size.
    planned_size: int | None = None

    def sampling(self, num_examples: int) -> tuple[int, float, int]:
        """(steps per epoch k, sample rate 1/k, divisor of the noisy sum) for a dataset of `num_examples` rows."""
        size = self.planned_size if self.planned_size is not None else num_examples
        k = steps_per_epoch(size, self.expected_batch_size)
        return k, 1.0 / k, max(1, int(size * (1.0 / k)))


@dataclass
class TrainResult:
    mean_loss: float
    steps: int  # logical optimizer steps (what the accountant counts)
    sample_rate: float
    noise_multiplier: float | None
    num_examples: int
    grad_sample_mode: str = "none"  # the per-sample clipping that ran ("auto" resolved); "none" without DP


def steps_per_epoch(num_examples: int, expected_batch_size: int) -> int:
    return max(1, math.ceil(num_examples / expected_batch_size))


def sample_rate_for(num_examples: int, expected_batch_size: int) -> float:
    """Opacus' DPDataLoader samples each example with q = 1 / len(original loader) and takes
    that many steps per epoch; planning and accounting use exactly the same q and steps."""
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


def resolve_grad_sample_mode(mode: str, model: nn.Module) -> str:
    """Resolves "auto": "bookkeeping" when every trainable parameter sits in a layer it supports,
    else "hooks"."""
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"unknown grad_sample_mode {mode!r}; one of {', '.join(GRAD_SAMPLE_MODES)}")
    if mode == "auto":
        return "bookkeeping" if BookkeepingDP.supports(model) else "hooks"
    return mode


class TrainingStep:
    """One optimisation step on one physical batch, without DP (shuffled batches, autograd).

    `make_training_step` picks the subclass; `train_model` and benchmarks/dp_overhead.py both
    drive training through `run`, so what is benchmarked is what trains.
    """

    mode = "none"

    def __init__(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable, s: TrainSettings
    ) -> None:
        self.module = module  # what the loss function calls (Opacus' wrapper under hooks/ghost)
        self.optimizer = optimizer
        self.loader = loader  # one epoch of physical batches
        self.settings = s
        self.device = torch.device(s.device)
        params = [p for p in module.parameters() if p.requires_grad]
        self.params = params
        self.global_params = [p.detach().clone() for p in params] if s.proximal_mu > 0 else None

    def run(self, loss_fn: LossFn, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, bool]:
        """-> (the batch's loss, detached; whether a logical optimizer step happened)."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.settings.precision, self.device):
            loss = loss_fn(self.module, batch)
        loss = self.backward(loss)
        return loss.detach(), self.step()

    def _proximal(self) -> torch.Tensor:
        assert self.global_params is not None
        squares = sum(((p - g) ** 2).sum() for p, g in zip(self.params, self.global_params))
        return 0.5 * self.settings.proximal_mu * squares

    def _add_proximal_grad(self) -> None:
        """FedProx under DP: mu (w - w_global) needs no data, so it joins after the noise."""
        if self.global_params is not None:
            for p, g in zip(self.params, self.global_params):
                p.grad.add_(p.detach() - g, alpha=self.settings.proximal_mu)

    def _reported(self, loss: torch.Tensor) -> torch.Tensor:
        if self.global_params is None:
            return loss
        with torch.no_grad():
            return loss + self._proximal()

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        if self.global_params is not None:
            loss = loss + self._proximal()
        loss.backward()
        return loss

    def step(self) -> bool:
        self.optimizer.step()
        return True

    def close(self) -> None:
        return None


class _OpacusStep(TrainingStep):
    """Opacus hooks/functorch: GradSampleModule per-sample gradients, DPOptimizer clips and noises."""

    def __init__(self, work: nn.Module, dataset: Dataset, s: TrainSettings, mode: str, rng: DPRandomness) -> None:
        optimizer = _optimizer([p for p in work.parameters() if p.requires_grad], s)
        module, optimizer, loader = _make_private(work, optimizer, dataset, s, mode, rng)
        _check_sample_rate(loader, dataset, s)
        if s.max_physical_batch_size:
            from opacus.utils.batch_memory_manager import wrap_data_loader

            loader = wrap_data_loader(
                data_loader=loader, max_batch_size=s.max_physical_batch_size, optimizer=optimizer
            )
        super().__init__(module, optimizer, loader, s)
        self.mode = mode
        accountant_hook = optimizer.step_hook

        def after_noise(opt: Any) -> None:  # called once per logical step, after noise and scaling
            if accountant_hook is not None:
                accountant_hook(opt)
            self._add_proximal_grad()

        optimizer.step_hook = after_noise

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # Opacus' hooks fire on inputs without grad: expected
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        return self._reported(loss)

    def step(self) -> bool:
        self.optimizer.step()
        # with a physical batch split off a logical one only the last really steps
        return not getattr(self.optimizer, "_is_last_step_skipped", False)


class _OpacusGhostStep(_OpacusStep):
    """Opacus ghost clipping. Our loss functions return a batch mean, not Opacus' per-sample
    losses, so the second (clipped) backward starts from the model outputs: sample i's output
    gradient times n * c_i gives sum_i c_i grad loss_i, what Opacus' DPTensorFastGradientClipping
    computes (exact for models whose output rows depend on their own sample only, as DP needs)."""

    def __init__(self, work: nn.Module, dataset: Dataset, s: TrainSettings, rng: DPRandomness) -> None:
        super().__init__(work, dataset, s, "ghost", rng)
        self._outputs: list[torch.Tensor] = []
        self.module.register_forward_hook(self._keep_outputs)

    def _keep_outputs(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.is_grad_enabled():
            self._outputs += [t for t in _tensors_in(output) if t.requires_grad]

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        outputs, self._outputs = self._outputs, []
        grads = torch.autograd.grad(loss, outputs, retain_graph=True, allow_unused=True)
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None]
        with warnings.catch_warnings():  # Opacus' hooks fire on inputs without grad: expected
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            try:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs], retain_graph=True)
                coef = self.module.get_clipping_coef()
            except (AttributeError, NotImplementedError, RuntimeError, ValueError) as err:
                model = type(self.module._module).__name__
                raise RuntimeError(
                    f"grad_sample_mode 'ghost': Opacus ghost clipping fails on {model} ({err}; it has no"
                    " norms for Linear inputs of more than 3 dims); use 'bookkeeping' or 'hooks'"
                ) from err
            self.optimizer.zero_grad()  # drop the unclipped gradients of the first pass
            n = pairs[0][0].shape[0] if pairs else 0
            weight = coef.to(loss.device) * (n if self.module.loss_reduction == "mean" else 1)
            self.module.disable_hooks()
            try:
                scaled = [g * weight.to(g.dtype).view(-1, *([1] * (g.dim() - 1))) for _, g in pairs]
                torch.autograd.backward([o for o, _ in pairs], scaled)
            finally:
                self.module.enable_hooks()
        return self._reported(loss)


def _tensors_in(output: Any) -> list[torch.Tensor]:
    """The tensors of a model output: a tensor, or tuples/lists/dicts of them."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors_in(item)]
    return []


class _LogicalBatchEnds:
    """Stands in for the DPOptimizer in Opacus' batch splitter: records, per physical batch,
    whether more of the same logical batch follows."""

    def __init__(self) -> None:
        self.more_follow: list[bool] = []

    def signal_skip_step(self, do_skip: bool = True) -> None:
        self.more_follow.append(do_skip)


class _BookkeepingStep(TrainingStep):
    """BookkeepingDP on Opacus' Poisson loader and batch splitter, any torch optimizer."""

    mode = "bookkeeping"

    def __init__(self, work: nn.Module, dataset: Dataset, s: TrainSettings, rng: DPRandomness) -> None:
        from opacus.data_loader import DPDataLoader
        from opacus.utils.batch_memory_manager import wrap_data_loader

        assert s.noise_multiplier is not None
        base = _logical_loader(dataset, s, rng.sampler)
        expected_batch_size = s.sampling(len(dataset))[2]  # type: ignore[arg-type]  # public, as in _make_private
        loader: DataLoader = DPDataLoader.from_data_loader(base)
        _check_sample_rate(loader, dataset, s)
        self.ends = _LogicalBatchEnds()
        if s.max_physical_batch_size:
            loader = wrap_data_loader(
                data_loader=loader, max_batch_size=s.max_physical_batch_size, optimizer=self.ends
            )
        params = [p for p in work.parameters() if p.requires_grad]
        super().__init__(work, _optimizer(params, s), loader, s)
        self.engine = BookkeepingDP(work, s.max_grad_norm, s.noise_multiplier, expected_batch_size, generator=rng.noise)

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        loss.backward()
        self.engine.clip_and_accumulate()
        return self._reported(loss)

    def step(self) -> bool:
        if self.ends.more_follow and self.ends.more_follow.pop(0):
            return False
        self.engine.privatize_grads()
        self._add_proximal_grad()
        self.optimizer.step()
        return True

    def close(self) -> None:
        self.engine.remove()


def _logical_loader(dataset: Dataset, s: TrainSettings, sampler: torch.Generator) -> DataLoader:
    """The DataLoader Opacus derives Poisson sampling from: q = 1 / len(this loader), so it holds exactly
    k = ceil(planned size / B) batches (never iterated); its generator is the one Opacus' DPDataLoader
    draws the Poisson masks from."""
    pin = torch.device(s.device).type == "cuda"
    k, _, _ = s.sampling(len(dataset))  # type: ignore[arg-type]
    return DataLoader(dataset, batch_sampler=BatchSampler(range(k), batch_size=1, drop_last=False), pin_memory=pin,
                      generator=sampler)


def _check_sample_rate(poisson_loader: Any, dataset: Dataset, s: TrainSettings) -> None:
    _, q, _ = s.sampling(len(dataset))  # type: ignore[arg-type]
    if abs(poisson_loader.sample_rate - q) > 1e-12:  # the ledger must record what really ran
        raise RuntimeError(f"Opacus sample rate {poisson_loader.sample_rate} != planned {q}")


def _make_private(
    work: nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset, s: TrainSettings, mode: str,
    rng: DPRandomness,
) -> Any:
    from opacus import PrivacyEngine

    with warnings.catch_warnings():
        # secure_mode (torchcsprng) is not installable here; Opacus warns on every engine.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        engine = PrivacyEngine(accountant="rdp")
        private = engine.make_private(
            module=work,
            optimizer=optimizer,
            data_loader=_logical_loader(dataset, s, rng.sampler),
            noise_multiplier=s.noise_multiplier,
            max_grad_norm=s.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=mode,
            noise_generator=rng.noise,
            **({"criterion": nn.MSELoss()} if mode == "ghost" else {}),  # unused: see _OpacusGhostStep
        )
    # Opacus' secure-mode noise (discard one draw, sum four) from our generator; without torchcsprng
    # PrivacyEngine(secure_mode=True) cannot be built, but the optimizer's flag only picks the draw.
    private[1].secure_mode = True
    # the noisy sum's divisor from the public planned size: Opacus takes len(dataset) * q, whose exact value the
    # update's noise scale would give away
    private[1].expected_batch_size = s.sampling(len(dataset))[2]  # type: ignore[arg-type]
    if mode == "ghost":
        module, optimizer, _criterion, loader = private
        return module, optimizer, loader
    return private


def make_training_step(
    work: nn.Module, dataset: Dataset, s: TrainSettings, rng: DPRandomness | None = None
) -> TrainingStep:
    """The optimizer, loader and DP machinery for `work` (already on s.device, in train mode); DP
    randomness from `rng`, by default fresh generators per `s.dp_seed` (secret unless it is set)."""
    keep_freed_memory()  # no page faults for the memory every step allocates again (devices.py)
    if s.noise_multiplier is None:
        params = [p for p in work.parameters() if p.requires_grad]
        pin = torch.device(s.device).type == "cuda"
        loader = DataLoader(dataset, batch_size=s.expected_batch_size, shuffle=True, pin_memory=pin)
        return TrainingStep(work, _optimizer(params, s), loader, s)
    rng = rng or dp_randomness(s.device, s.dp_seed)
    mode = resolve_grad_sample_mode(s.grad_sample_mode, work)
    if mode == "bookkeeping":
        return _BookkeepingStep(work, dataset, s, rng)
    if mode == "ghost":
        return _OpacusGhostStep(work, dataset, s, rng)
    return _OpacusStep(work, dataset, s, mode, rng)


def train_model(model: nn.Module, dataset: Dataset, loss_fn: LossFn, s: TrainSettings) -> TrainResult:
    """Trains `model` in place (its weights are replaced by the trained ones)."""
    device = torch.device(s.device)
    configure_precision(s.precision)
    if s.seed is not None:
        torch.manual_seed(s.seed)
    n = len(dataset)  # type: ignore[arg-type]
    work = copy.deepcopy(model).to(device).train()  # hooks stay on the copy
    trainer = make_training_step(work, dataset, s)
    pin = device.type == "cuda"
    total = torch.zeros((), device=device)
    batches = 0
    logical_steps = 0
    try:
        for _ in range(s.epochs):
            for batch in trainer.loader:
                batch = [t.to(device, non_blocking=pin) for t in batch]
                loss, stepped = trainer.run(loss_fn, batch)
                logical_steps += stepped
                # Poisson sampling can draw an empty batch: it is still noised and counted as a
                # step; its loss (NaN, mean of nothing) is kept out of the running mean.
                if batch[0].shape[0] > 0:
                    total += loss.float()  # no host sync inside the loop
                    batches += 1
    finally:
        trainer.close()
    model.load_state_dict(unwrap_state_dict(trainer.module))
    mean_loss = float(total / max(1, batches))
    return TrainResult(
        mean_loss if math.isfinite(mean_loss) else float("nan"),
        logical_steps,
        s.sampling(n)[1],
        s.noise_multiplier,
        n,
        trainer.mode if s.noise_multiplier is not None else "none",
    )
