"""Exact DP-SGD gradients in one backward pass: book-keeping (Bu et al. 2023, "Differentially
private optimization on large model at small cost").

While the engine is attached every trainable parameter has `requires_grad=False`, so autograd
only back-propagates through activations: the parameter-gradient GEMMs of a normal backward are
never run. A forward hook on each supported layer keeps its input A, and a hook on its output
keeps the output gradient G. After `loss.backward()`:

1. per-sample gradient norms of each layer from (A, G), with T positions per sample:
   the ghost norm ||A_i^T G_i||_F^2 = <A_i A_i^T, G_i G_i^T> (T^2 (d_in + d_out) flops) or the
   per-sample gradient A_i^T G_i materialised and dropped (T d_in d_out), whichever is cheaper;
2. one clip factor per sample over ALL parameters, c_i = min(1, C / (||g_i|| + 1e-6)), as Opacus;
3. per layer ONE contraction sum_i c_i A_i^T G_i (no second backward);
4. Gaussian noise N(0, (sigma C)^2) on the sum (from `generator`: the site passes its round's secret
   generator, shared.training.dp_rng), divided by the expected batch size when
   loss_reduction="mean": the same gradient as Opacus' DPOptimizer, same Poisson accounting.

Under bf16/fp16 autocast the products run on the half-precision copies the layers computed with,
with fp32 results (out_dtype on CUDA), and per-sample norms, clip factors and sums are fp32.
Exact where Opacus 1.6 hooks are not: Embedding(padding_idx=...) (Opacus gives the padding row
per-sample gradients) and convolutions with padding_mode != "zeros" (Opacus ignores the mode).
Supported layers (exact type, as Opacus matches them): nn.Linear (any leading dims
(B, ..., d_in)), nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.Conv1d, nn.Conv2d (any groups,
stride, dilation and padding mode). A model with any other trainable parameter (a GRU, a bare
nn.Parameter, a parameter shared between two modules) is refused at setup with the list of those
parameters. A layer may be called several times in one forward (its per-sample gradient is the
sum over calls); its parameters must be used only through its own forward, and its output must
not be modified in place when its input needs no gradient (the first layer of a model).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shared.training.dp_rng import dp_randomness, gaussian_noise

# Scratch memory one norm computation may take per chunk of samples (grams or per-sample grads).
_CHUNK_BYTES = 1 << 29
_HALF = (torch.bfloat16, torch.float16)


class UnsupportedLayerError(ValueError):
    """The model has trainable parameters the book-keeping engine cannot privatise."""


@dataclass
class _Call:
    """One forward call of a layer: what it kept of its input, and its output gradient."""

    activation: torch.Tensor
    grad: torch.Tensor | None = None


Trainable = Callable[[nn.Parameter | None], bool]
ParamGrads = list[tuple[nn.Parameter, torch.Tensor]]


class _LayerRule:
    """Per-sample norms and clipped sums of one layer type's parameters from (A, G)."""

    param_names: tuple[str, ...] = ("weight", "bias")
    casts_under_autocast = False  # keep the input in the autocast dtype (what the layer computes in)

    def unsupported(self, module: nn.Module) -> str | None:
        return None

    def norms(
        self, module: nn.Module, calls: list[_Call], trainable: Trainable, cache: _GramCache
    ) -> tuple[torch.Tensor, Any]:
        """-> (squared per-sample gradient norms (B,) fp32, state for `clipped`)."""
        raise NotImplementedError

    def clipped(
        self, module: nn.Module, state: Any, scale: torch.Tensor, trainable: Trainable, cache: _GramCache
    ) -> ParamGrads:
        """-> [(parameter, sum_i scale_i * per-sample gradient_i)]."""
        raise NotImplementedError


_RULES: dict[type[nn.Module], _LayerRule] = {}


def _rule_for(*types: type[nn.Module]) -> Callable[[type[_LayerRule]], type[_LayerRule]]:
    def deco(cls: type[_LayerRule]) -> type[_LayerRule]:
        for t in types:
            _RULES[t] = cls()
        return cls

    return deco


# --- tensor helpers -------------------------------------------------------------------------


@functools.cache
def _has_fp32_out(op: str, device_type: str, dtype: torch.dtype) -> bool:
    """Whether torch.bmm / torch.mm(..., out_dtype=float32) run for half inputs here (CUDA, torch >= 2.8)."""
    try:
        x = torch.ones(1, 1, 1, device=device_type, dtype=dtype)
        if op == "bmm":
            torch.bmm(x, x, out_dtype=torch.float32)
        else:
            torch.mm(x[0], x[0], out_dtype=torch.float32)
        return True
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _bmm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched product with an fp32 result; half inputs stay on tensor cores where possible."""
    if a.dtype in _HALF:
        if _has_fp32_out("bmm", a.device.type, a.dtype):
            return torch.bmm(a, b, out_dtype=torch.float32)
        return torch.bmm(a.float(), b.float())
    return torch.bmm(a, b).float()


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype in _HALF:
        if _has_fp32_out("mm", a.device.type, a.dtype):
            return torch.mm(a, b, out_dtype=torch.float32)
        return _bmm_f32(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0)
    return (a @ b).float()


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, ..., d) -> (B, T, d): every position between the sample and feature dims is a row."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1])


def _chunks(batch: int, bytes_per_sample: int) -> Iterable[slice]:
    """Slices of the batch whose scratch memory stays under _CHUNK_BYTES."""
    step = max(1, _CHUNK_BYTES // max(1, bytes_per_sample))
    return (slice(i, i + step) for i in range(0, batch, step))


class _GramCache:
    """The last activation's A A^T and c-scaled A: q, k and v projections share their input."""

    def __init__(self) -> None:
        self.gram_key: object = None
        self.grams: dict[int, torch.Tensor] = {}
        self.scaled_key: object = None
        self.scaled_value: torch.Tensor | None = None

    def gram(self, a: torch.Tensor, part: slice, key: object) -> torch.Tensor:
        """A A^T of the samples in `part`; `key` names the activation a was made from (None: no reuse)."""
        if key is None or key is not self.gram_key:
            self.gram_key, self.grams = key, {}
        if part.start not in self.grams:
            self.grams[part.start] = _bmm_f32(a[part], a[part].mT)
        return self.grams[part.start]

    def scaled(self, a: torch.Tensor, scale: torch.Tensor, key: object) -> torch.Tensor:
        """a * scale per sample (one scale per clipping pass)."""
        if key is None or key is not self.scaled_key:
            self.scaled_key = key
            self.scaled_value = a * scale.to(a.dtype).view(-1, *([1] * (a.dim() - 1)))
        return self.scaled_value


def _outer_norm_sq(
    a: torch.Tensor, g: torch.Tensor, cache: _GramCache | None = None, key: object = None
) -> torch.Tensor:
    """Squared Frobenius norms of the per-sample products a_i^T g_i: a (N, T, p), g (N, T, q) -> (N,)."""
    n, t, p = a.shape
    q = g.shape[-1]
    if n == 0:
        return torch.zeros(0, device=a.device)
    if t == 1:
        return a.float().square().sum((1, 2)) * g.float().square().sum((1, 2))
    out = []
    if t * (p + q) <= p * q:  # ghost norm: <A A^T, G G^T>
        for part in _chunks(n, 8 * t * t):
            aa = cache.gram(a, part, key) if cache is not None else _bmm_f32(a[part], a[part].mT)
            gg = _bmm_f32(g[part], g[part].mT)
            out.append(torch.bmm(aa.flatten(1).unsqueeze(1), gg.flatten(1).unsqueeze(2)).flatten())
    else:  # materialise each sample's (q, p) gradient, take its norm, drop it
        for part in _chunks(n, 4 * p * q):
            out.append(_bmm_f32(g[part].mT, a[part]).square().sum((1, 2)))
    return out[0] if len(out) == 1 else torch.cat(out)


def _weighted_outer_sum(
    scale: torch.Tensor, a: torch.Tensor, g: torch.Tensor, cache: _GramCache, key: object
) -> torch.Tensor:
    """sum_i scale_i a_i^T g_i as a (q, p) matrix, in one GEMM over all rows of all samples.
    The narrower operand is scaled; a shared activation (q, k, v) only once."""
    p, q = a.shape[-1], g.shape[-1]
    if p <= q:
        a = cache.scaled(a, scale, key)
    else:
        g = g * scale.to(g.dtype).view(-1, *([1] * (g.dim() - 1)))
    return _mm_f32(g.reshape(-1, q).mT, a.reshape(-1, p))


def _cat_positions(tensors: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


# --- layer rules ----------------------------------------------------------------------------


@_rule_for(nn.Linear)
class _LinearRule(_LayerRule):
    casts_under_autocast = True

    def norms(self, module, calls, trainable, cache):
        g = _cat_positions([_rows(c.grad) for c in calls])  # (B, T, out)
        a = _cat_positions([_rows(c.activation) for c in calls]).to(g.dtype)  # (B, T, in)
        key = calls[0].activation if len(calls) == 1 else None  # q, k, v: one kept input
        sq = torch.zeros(g.shape[0], device=g.device)
        if trainable(module.weight):
            sq = sq + _outer_norm_sq(a, g, cache, key)
        bias = None
        if trainable(module.bias):
            bias = g.sum(1, dtype=torch.float32)  # (B, out)
            sq = sq + bias.square().sum(1)
        return sq, (a, g, bias, key)

    def clipped(self, module, state, scale, trainable, cache):
        a, g, bias, key = state
        out = []
        if trainable(module.weight):
            out.append((module.weight, _weighted_outer_sum(scale, a, g, cache, key)))
        if bias is not None:
            out.append((module.bias, scale @ bias))
        return out


class _AffineNormRule(_LayerRule):
    """Norm layers: per-sample gradients of the affine weight/bias are cheap sums; keep them."""

    def normalized(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_sample(
        self, module: nn.Module, g: torch.Tensor, xhat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def norms(self, module, calls, trainable, cache):
        weight = bias = None
        for call in calls:
            # x-hat in the input's dtype (bf16 under autocast, as Opacus' hooks have it); the
            # products with the fp32 output gradient and the sums over positions are fp32
            g = call.grad.float()
            w, b = self.per_sample(module, g, self.normalized(module, call.activation))
            weight = w if weight is None else weight + w
            bias = b if bias is None else bias + b
        grads = {}
        if trainable(module.weight):
            grads[module.weight] = weight
        if trainable(module.bias):
            grads[module.bias] = bias
        sq = sum(x.flatten(1).square().sum(1) for x in grads.values())
        return sq, grads

    def clipped(self, module, state, scale, trainable, cache):
        return [(p, torch.tensordot(scale, per_sample, dims=1)) for p, per_sample in state.items()]


@_rule_for(nn.LayerNorm)
class _LayerNormRule(_AffineNormRule):
    def normalized(self, module, x):
        return F.layer_norm(x, module.normalized_shape, eps=module.eps)

    def per_sample(self, module, g, xhat):
        shape = (
            g.shape[0],
            math.prod(g.shape[1 : g.dim() - len(module.normalized_shape)]),
            *module.normalized_shape,
        )
        return (g * xhat).reshape(shape).sum(1), g.reshape(shape).sum(1)


@_rule_for(nn.GroupNorm)
class _GroupNormRule(_AffineNormRule):
    def normalized(self, module, x):
        return F.group_norm(x, module.num_groups, eps=module.eps)

    def per_sample(self, module, g, xhat):
        return (g * xhat).flatten(2).sum(2), g.flatten(2).sum(2)  # (B, C) each


@_rule_for(nn.Embedding)
class _EmbeddingRule(_LayerRule):
    param_names = ("weight",)

    def unsupported(self, module):
        if module.max_norm is not None:
            return "Embedding with max_norm rewrites its weights in forward"
        if module.scale_grad_by_freq or module.sparse:
            return "Embedding with scale_grad_by_freq or sparse gradients"
        return None

    def norms(self, module, calls, trainable, cache):
        b = calls[0].grad.shape[0]
        idx = _cat_positions(
            [c.activation.reshape(b, math.prod(c.activation.shape[1:])) for c in calls]
        )  # (B, T)
        g = _cat_positions([_rows(c.grad) for c in calls]).float()  # (B, T, d)
        if module.padding_idx is not None:  # the padding row never receives a gradient
            g = g * (idx != module.padding_idx).unsqueeze(-1)
        # ||sum_t onehot(idx_t) g_t^T||^2 = sum_{t,s} [idx_t == idx_s] <g_t, g_s>
        t = idx.shape[1]
        sq = [torch.zeros(0, device=g.device)]
        for part in _chunks(b, 8 * t * t):
            same = (idx[part].unsqueeze(2) == idx[part].unsqueeze(1)).float()  # (b, T, T)
            gram = torch.bmm(g[part], g[part].mT)
            sq.append(torch.bmm(same.flatten(1).unsqueeze(1), gram.flatten(1).unsqueeze(2)).flatten())
        return torch.cat(sq), (idx, g)

    def clipped(self, module, state, scale, trainable, cache):
        idx, g = state
        rows = (g * scale.view(-1, 1, 1)).reshape(-1, g.shape[-1])
        weight = torch.zeros(module.weight.shape, device=g.device).index_add_(0, idx.flatten(), rows)
        return [(module.weight, weight)]


@_rule_for(nn.Conv1d, nn.Conv2d)
class _ConvRule(_LayerRule):
    """Weight gradients through the backend's own conv weight-gradient kernel (cuDNN, oneDNN):
    the clipped sum is one call with G scaled per sample; per-sample gradients are one call with
    the samples as extra groups (input (1, B*C_in, ...), groups B*groups). Where the ghost norm is
    cheaper (few output positions L per sample) it runs on the unfolded input instead."""

    casts_under_autocast = True

    @staticmethod
    def padded(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Non-zero padding modes and 'same'/'valid' padding become an explicit F.pad."""
        if module.padding_mode == "zeros" and not isinstance(module.padding, str):
            return x, tuple(module.padding)
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        return F.pad(x, module._reversed_padding_repeated_twice, mode=mode), (0,) * len(module.kernel_size)

    @staticmethod
    def weight_grad(
        module: nn.Conv1d | nn.Conv2d, x: torch.Tensor, g: torch.Tensor, padding: tuple[int, ...], groups: int
    ) -> torch.Tensor:
        """sum over the batch of the weight gradient, (C_out', C_in/groups, *kernel) for g's channels."""
        shape = (g.shape[1], x.shape[1] // groups, *module.kernel_size)
        weight = g.new_empty(1).expand(shape)
        return torch.ops.aten.convolution_backward(
            g,
            x,
            weight,
            None,
            module.stride,
            padding,
            module.dilation,
            False,
            [0] * len(padding),
            groups,
            (False, True, False),
        )[1]

    def columns(self, module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """Input -> unfolded patches (B, groups, C_in/groups * prod(kernel), L)."""
        x, padding = self.padded(module, x)
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
        if isinstance(module, nn.Conv1d):  # as a (1, k) Conv2d over (B, C, 1, L)
            x = x.unsqueeze(-2)
            kernel, dilation, stride, padding = (1, *kernel), (1, *dilation), (1, *stride), (0, *padding)
        cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, C_in*k, L)
        return cols.view(x.shape[0], module.groups, cols.shape[1] // module.groups, cols.shape[-1])

    @staticmethod
    def is_channel_scale(module: nn.Conv1d | nn.Conv2d) -> bool:
        """A depthwise 1x1 conv (a per-channel affine, as in TokenGroupNorm): an elementwise rule."""
        c = module.in_channels
        return (
            module.groups == c == module.out_channels
            and math.prod(module.kernel_size) == 1
            and all(v == 1 for v in module.stride)
            and not any(module._reversed_padding_repeated_twice)
        )

    def norms(self, module, calls, trainable, cache):
        if self.is_channel_scale(module):
            return self.channel_scale_norms(module, calls, trainable)
        groups, outs = module.groups, module.out_channels // module.groups
        dtype = calls[0].grad.dtype
        b = calls[0].grad.shape[0]
        positions = sum(math.prod(c.grad.shape[2:]) for c in calls)
        k = module.weight[0].numel()  # C_in/groups * prod(kernel)
        sq = torch.zeros(b, device=calls[0].grad.device)
        if trainable(module.weight):
            if positions * (k + outs) <= k * outs:  # ghost norm per group over the L positions
                g = _cat_positions(
                    [c.grad.reshape(b, groups, outs, math.prod(c.grad.shape[2:])) for c in calls], 3
                )
                cols = _cat_positions([self.columns(module, c.activation.to(dtype)) for c in calls], 3)
                group_sq = _outer_norm_sq(
                    cols.mT.reshape(b * groups, positions, k), g.mT.reshape(b * groups, positions, outs)
                )
                sq = sq + group_sq.view(b, groups).sum(1)
            else:  # per-sample gradients, samples as groups, in chunks
                for part in _chunks(b, 8 * module.weight.numel()):
                    per_sample = None
                    for c in calls:
                        x, padding = self.padded(module, c.activation[part].to(dtype))
                        n = x.shape[0]
                        grad = self.weight_grad(
                            module,
                            x.reshape(1, -1, *x.shape[2:]),
                            c.grad[part].reshape(1, -1, *c.grad.shape[2:]),
                            padding,
                            n * groups,
                        )
                        per_sample = grad if per_sample is None else per_sample + grad
                    sq[part] += per_sample.reshape(-1, module.weight.numel()).float().square().sum(1)
        bias = None
        if trainable(module.bias):
            bias = sum(c.grad.flatten(2).sum(2, dtype=torch.float32) for c in calls)  # (B, C_out)
            sq = sq + bias.square().sum(1)
        return sq, (calls, bias)

    def channel_scale_norms(self, module, calls, trainable):
        weight = bias = None
        for c in calls:
            g = c.grad.flatten(2).float()  # (B, C, L)
            w, b = (g * c.activation.flatten(2)).sum(2), g.sum(2)
            weight = w if weight is None else weight + w
            bias = b if bias is None else bias + b
        grads = {}
        if trainable(module.weight):
            grads[module.weight] = weight.view(-1, *module.weight.shape)
        if trainable(module.bias):
            grads[module.bias] = bias
        sq = sum(x.flatten(1).square().sum(1) for x in grads.values())
        return sq, grads

    def clipped(self, module, state, scale, trainable, cache):
        if isinstance(state, dict):  # channel_scale_norms kept the per-sample gradients
            return [(p, torch.tensordot(scale, per_sample, dims=1)) for p, per_sample in state.items()]
        calls, bias = state
        out = []
        if trainable(module.weight):
            weight = None
            for c in calls:
                x, padding = self.padded(module, c.activation.to(c.grad.dtype))
                g = c.grad * scale.to(c.grad.dtype).view(-1, *([1] * (c.grad.dim() - 1)))
                grad = self.weight_grad(module, x, g, padding, module.groups).float()
                weight = grad if weight is None else weight + grad
            out.append((module.weight, weight))
        if bias is not None:
            out.append((module.bias, scale @ bias))
        return out


# --- the engine -----------------------------------------------------------------------------


def uncovered_parameters(model: nn.Module) -> list[str]:
    """Trainable parameters the engine cannot privatise, each with the reason."""
    owners: dict[int, str] = {}
    problems = []
    for module_name, module in model.named_modules():
        rule = _RULES.get(type(module))
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            name = f"{module_name}.{param_name}" if module_name else param_name
            if id(param) in owners:
                problems.append(f"{name} (shared with {owners[id(param)]})")
                continue
            owners[id(param)] = name
            why = None
            if rule is None:
                why = f"{type(module).__name__} has no book-keeping rule"
            elif param_name not in rule.param_names:
                why = f"not a standard {type(module).__name__} parameter"
            else:
                why = rule.unsupported(module)
            if why:
                problems.append(f"{name} ({why})")
    return problems


class BookkeepingDP:
    """Exact DP-SGD per-sample clipping + Gaussian noise, one backward pass, any optimizer after.

    Usage, per logical (Poisson) batch split into physical batches:
        for physical in logical: loss_fn(model, physical).backward(); engine.clip_and_accumulate()
        engine.privatize_grads(); optimizer.step(); optimizer.zero_grad()
    (`privatize_grads` also accumulates a pending physical batch, so one physical batch needs
    only `loss.backward(); engine.privatize_grads()`.) `remove()` restores the model.
    """

    def __init__(
        self,
        model: nn.Module,
        max_grad_norm: float,
        noise_multiplier: float,
        expected_batch_size: int,
        loss_reduction: str = "mean",
        generator: torch.Generator | None = None,
    ) -> None:
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if loss_reduction == "mean" and expected_batch_size < 1:
            raise ValueError(f"expected_batch_size must be >= 1, got {expected_batch_size}")
        problems = uncovered_parameters(model)
        if problems:
            raise UnsupportedLayerError(
                "book-keeping DP cannot privatise these trainable parameters (use grad_sample_mode "
                f"'hooks'): {'; '.join(problems)}"
            )
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = expected_batch_size
        self.loss_reduction = loss_reduction
        self.generator = generator
        self.per_sample_norms: torch.Tensor | None = None  # of the last physical batch, for inspection
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._ids = {id(p) for p in self._params}
        self._calls: dict[nn.Module, list[_Call]] = {}
        # (last input, what was kept of it): q, k and v share one kept tensor, so their A A^T and
        # c-scaled A are computed once
        self._cast: tuple[torch.Tensor, torch.Tensor] | None = None
        self._sums: dict[int, torch.Tensor] | None = None
        self._flats: list[torch.Tensor] = []
        self._handles = [
            m.register_forward_hook(self._capture, with_kwargs=True)
            for m in model.modules()
            if type(m) in _RULES and any(id(p) in self._ids for p in m.parameters(recurse=False))
        ]
        for p in self._params:
            p.requires_grad_(False)  # autograd skips every parameter-gradient GEMM

    @staticmethod
    def supports(model: nn.Module) -> bool:
        return not uncovered_parameters(model)

    def _trainable(self, p: nn.Parameter | None) -> bool:
        return p is not None and id(p) in self._ids

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> torch.Tensor | None:
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
            return None
        x = args[0] if args else next(iter(kwargs.values()))
        call = _Call(self._kept_input(module, x))
        self._calls.setdefault(module, []).append(call)

        def keep_grad(grad: torch.Tensor) -> None:
            call.grad = grad

        if output.requires_grad:
            output.register_hook(keep_grad)
            return None
        # Input needs no gradient and parameters are frozen: make the output a leaf so the
        # backward still reaches it (no wasted input-gradient GEMM for the first layer).
        leaf = output.detach().requires_grad_()
        leaf.register_hook(keep_grad)
        return leaf

    def _kept_input(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Under autocast keep the half-precision copy the layer computes with (once per input)."""
        device = x.device.type
        dtype = x.dtype
        if (
            _RULES[type(module)].casts_under_autocast
            and x.is_floating_point()
            and torch.is_autocast_enabled(device)
        ):
            dtype = torch.get_autocast_dtype(device)
        if self._cast is None or self._cast[0] is not x or self._cast[1].dtype != dtype:
            self._cast = (x, x.detach().to(dtype))
        return self._cast[1]

    def _sum_buffers(self) -> dict[int, torch.Tensor]:
        """One flat fp32 buffer per (device, dtype); each parameter's running sum is a view."""
        if self._sums is None:
            self._sums, self._flats = {}, []
            groups: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
            for p in self._params:
                groups.setdefault((p.device, p.dtype), []).append(p)
            for (device, dtype), params in groups.items():
                flat = torch.zeros(sum(p.numel() for p in params), device=device, dtype=dtype)
                self._flats.append(flat)
                for p, view in zip(params, flat.split([p.numel() for p in params]), strict=True):
                    self._sums[id(p)] = view.view_as(p)
        return self._sums

    def clip_and_accumulate(self) -> None:
        """Per-sample norms, clip factors and clipped sums of the physical batch just backpropagated."""
        calls, self._calls, self._cast = self._calls, {}, None
        sums = self._sum_buffers()
        cache = _GramCache()
        layers, sq = [], None
        for module, module_calls in calls.items():
            done = [c for c in module_calls if c.grad is not None]  # a call off the loss path adds 0
            if not done:
                continue
            rule = _RULES[type(module)]
            layer_sq, state = rule.norms(module, done, self._trainable, cache)
            sq = layer_sq if sq is None else sq + layer_sq
            layers.append((module, rule, state))
        del calls
        if sq is None:
            return
        # loss_reduction="mean": the loss is a mean over this physical batch, so G_i = dloss_i/dout / n
        per_sample = sq.shape[0] if self.loss_reduction == "mean" else 1
        norms = sq.sqrt() * per_sample
        self.per_sample_norms = norms
        scale = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0) * per_sample
        targets, grads = [], []
        while layers:
            module, rule, state = layers.pop(0)
            for p, grad in rule.clipped(module, state, scale, self._trainable, cache):
                targets.append(sums[id(p)])
                grads.append(grad.to(p.dtype))
        torch._foreach_add_(targets, grads)

    def privatize_grads(self) -> None:
        """Noise the accumulated clipped sum once, scale it as Opacus does, write every `.grad`."""
        if self._calls:
            self.clip_and_accumulate()
        sums = self._sum_buffers()
        std = self.noise_multiplier * self.max_grad_norm
        for flat in self._flats:
            if std > 0:  # secure-mode draws from the round's dedicated generator (shared.training.dp_rng)
                flat.add_(gaussian_noise(flat, std, self._noise_generator(flat.device)))
            if self.loss_reduction == "mean":
                flat.div_(self.expected_batch_size)
        for p in self._params:
            p.grad = sums[id(p)]
        self._sums, self._flats = None, []  # the next logical batch starts from fresh zeros

    def _noise_generator(self, device: torch.device) -> torch.Generator:
        """The given generator; without one, a secret one (OS CSPRNG) per device, never torch's global one."""
        if self.generator is None or self.generator.device.type != device.type:
            self.generator = dp_randomness(device).noise
        return self.generator

    def clear(self) -> None:
        """Drop captured activations/gradients and any partial sum (e.g. after a forward without backward)."""
        self._calls, self._cast, self._sums, self._flats = {}, None, None, []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()
        for p in self._params:
            p.requires_grad_(True)
