"""Opacus checks shared by the model tests: validator, one real DP-SGD step, and per-sample
gradients equal to those of per-sample autograd."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]


def assert_one_dp_step(model: nn.Module, tensors: Sequence[torch.Tensor], loss_fn: LossFn) -> None:
    """Validator clean, then one DP-SGD step (hooks, fixed batch): every trainable parameter has
    a grad_sample with first dim == batch size, and the step changes the weights."""
    assert ModuleValidator.validate(model, strict=True) == []
    batch_size = len(tensors[0])
    loader = DataLoader(TensorDataset(*tensors), batch_size=batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG and full-backward-hook notices
        private, optimizer, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=False,
            grad_sample_mode="hooks",
        )
        before = {n: p.detach().clone() for n, p in private.named_parameters()}
        batch = next(iter(loader))
        loss_fn(private, batch).backward()
    trainable = [(n, p) for n, p in private.named_parameters() if p.requires_grad]
    assert trainable
    for name, param in trainable:
        assert param.grad_sample is not None, name
        assert param.grad_sample.shape == (batch_size, *param.shape), name
    optimizer.step()
    for name, param in trainable:
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert not torch.equal(param.detach(), before[name]), name


def assert_grad_samples_exact(model: nn.Module, tensors: Sequence[torch.Tensor], loss_fn: LossFn) -> None:
    """Opacus' per-sample gradients equal autograd on each sample alone (model without dropout,
    loss summed over the batch)."""
    wrapped = GradSampleModule(model, loss_reduction="sum")
    wrapped.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss_fn(wrapped, tensors).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    batched = {n: p.grad_sample.detach().clone() for n, p in params}
    wrapped._close()  # remove the hooks before the per-sample reference passes
    for i in range(len(tensors[0])):
        model.zero_grad(set_to_none=True)
        single = [t[i : i + 1] for t in tensors]
        grads = torch.autograd.grad(loss_fn(model, single), [p for _, p in params], allow_unused=True)
        for (name, param), grad in zip(params, grads, strict=True):
            expected = torch.zeros_like(param) if grad is None else grad
            torch.testing.assert_close(
                batched[name][i], expected, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
            )


def assert_empty_batch_runs(model: nn.Module, tensors: Sequence[torch.Tensor], loss_fn: LossFn) -> None:
    """Poisson sampling can draw an empty batch: forward and backward must still run."""
    wrapped = GradSampleModule(model)
    wrapped.train()
    empty = [t[:0] for t in tensors]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = loss_fn(wrapped, empty)
        loss.backward()
    assert loss.item() == 0.0
    wrapped._close()
