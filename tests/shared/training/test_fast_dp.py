import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import TensorDataset

from shared.models.event_transformer import EventTransformer, EventTransformerConfig
from shared.models.multimodal import build_multimodal
from shared.models.set_transformer import SetTransformer, SetTransformerConfig
from shared.training.dp_trainer import TrainSettings, resolve_grad_sample_mode, steps_per_epoch, train_model
from shared.training.fast_dp import BookkeepingDP, UnsupportedLayerError, uncovered_parameters


def _flat(grads):
    return torch.cat([g.flatten() for g in grads])


def _opacus_grads(model, loss_fn, batch, clip, expected, seed=0):
    """Opacus hooks + DPOptimizer with no noise: (sum_i c_i g_i) / expected, per parameter."""
    model = copy.deepcopy(model)
    wrapped = GradSampleModule(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = DPOptimizer(
        torch.optim.SGD(params, lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=expected,
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss_fn(wrapped, batch).backward()
    optimizer.pre_step()
    return [p.grad.detach().clone() for p in params]


def _bookkeeping_grads(model, loss_fn, batch, clip, expected, seed=0, noise=0.0):
    model = copy.deepcopy(model)
    engine = BookkeepingDP(model, clip, noise, expected)
    torch.manual_seed(seed)
    loss_fn(model, batch).backward()
    engine.privatize_grads()
    grads = [p.grad.detach().clone() for p in engine._params]
    norms = engine.per_sample_norms
    engine.remove()
    return grads, norms


def _per_sample_truth(model, loss_fn, batch):
    """Autograd on each sample alone: (B, n_params) flat per-sample gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(batch[0])):
        grads = torch.autograd.grad(loss_fn(model, [t[i : i + 1] for t in batch]), params, allow_unused=True)
        rows.append(_flat([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]))
    return torch.stack(rows)


def _assert_same(actual, expected, rel=1e-5):
    """Every parameter's gradient within `rel` of the whole gradient's norm, and the whole within rel."""
    scale = _flat(expected).norm()
    assert scale > 0
    for a, e in zip(actual, expected, strict=True):
        assert (a - e).norm() <= rel * scale
    assert (_flat(actual) - _flat(expected)).norm() <= rel * scale


def _event_model(dropout=0.1):
    cfg = EventTransformerConfig(
        event_dim=9,
        static_dim=3,
        d_model=16,
        layers=2,
        heads=2,
        ff=32,
        pooling_heads=2,
        mlp_hidden=8,
        dropout=dropout,
    )
    return EventTransformer(cfg).train()


def _event_batch(b=6, length=7):
    lengths = torch.tensor([7, 3, 5, 1, 7, 2])[:b]
    valid = torch.arange(length)[None] < lengths[:, None]
    return [torch.randn(b, length, 9), valid, torch.randn(b, 3), torch.randint(0, 2, (b,)).float()]


def _event_loss(m, b):
    return F.binary_cross_entropy_with_logits(m(b[0], b[1], b[2]), b[3])


@pytest.mark.parametrize("clip", [0.05, 1e3])  # clipping every sample / none
def test_event_transformer_matches_opacus_hooks(clip):
    torch.manual_seed(0)
    model, batch = _event_model(dropout=0.1), _event_batch()  # dropout on: same seed, same masks
    expected = _opacus_grads(model, _event_loss, batch, clip, expected=4)
    grads, norms = _bookkeeping_grads(model, _event_loss, batch, clip, expected=4)
    _assert_same(grads, expected)
    assert norms.shape == (6,) and bool((norms > 0).all())


class _Tokenizer(nn.Module):
    """SetTransformer-like: Conv2d (1, k) over (B, 1, C*S, T), GroupNorm, depthwise 1x1 affine, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, (1, 5), stride=(1, 2), padding=(0, 2))
        self.norm1 = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 6, (1, 3), stride=(1, 2), padding=(0, 1), groups=2)
        self.affine = nn.Conv2d(6, 6, kernel_size=1, groups=6)
        self.proj = nn.Linear(6 * 4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.norm1(self.conv1(x)))  # (B, 4, R, 8)
        h = self.affine(self.conv2(h))  # (B, 6, R, 4)
        tokens = self.proj(h.permute(0, 2, 1, 3).flatten(2))  # (B, R, 5)
        return self.head(tokens.mean(1))


def _ce_loss(m, b):
    return F.cross_entropy(m(*b[:-1]), b[-1])


def test_conv_groupnorm_tokenizer_matches_opacus_hooks():
    torch.manual_seed(1)
    model = _Tokenizer()
    batch = [torch.randn(5, 1, 6, 16), torch.randint(0, 3, (5,))]
    expected = _opacus_grads(model, _ce_loss, batch, clip=0.3, expected=5)
    grads, _ = _bookkeeping_grads(model, _ce_loss, batch, clip=0.3, expected=5)
    _assert_same(grads, expected)


class _SetTransformerClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = SetTransformer(SetTransformerConfig.small(patch_samples=32, dropout=0.0))
        self.head = nn.Linear(64, 5)

    def forward(self, x, channel_valid, patch_valid):
        return self.head(self.encoder(x, channel_valid, patch_valid)["pooled"])


def test_set_transformer_matches_opacus_hooks():
    torch.manual_seed(2)
    model = _SetTransformerClassifier()
    channel_valid = torch.ones(3, 2, dtype=torch.bool)
    channel_valid[1, 1] = False
    patch_valid = torch.ones(3, 4, dtype=torch.bool)
    patch_valid[2, 2:] = False
    batch = [torch.randn(3, 2, 4, 32), channel_valid, patch_valid, torch.randint(0, 5, (3,))]
    expected = _opacus_grads(model, _ce_loss, batch, clip=0.5, expected=3)
    grads, _ = _bookkeeping_grads(model, _ce_loss, batch, clip=0.5, expected=3)
    _assert_same(grads, expected)


def test_multimodal_with_modality_dropout_matches_opacus_hooks():
    torch.manual_seed(3)
    model = build_multimodal(omics_dim=10, text_dim=8, hidden=8).train()
    batch = [torch.randn(6, 10), torch.randn(6, 8), torch.rand(6, 2) > 0.3, torch.randint(0, 2, (6,)).float()]

    def loss(m, b):
        return F.binary_cross_entropy_with_logits(m(b[0], b[1], b[2]).squeeze(-1), b[3])

    expected = _opacus_grads(model, loss, batch, clip=0.2, expected=6, seed=5)
    grads, _ = _bookkeeping_grads(model, loss, batch, clip=0.2, expected=6, seed=5)
    _assert_same(grads, expected)


def test_clipping_active_only_on_large_samples():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(8, 6)
    y = torch.randn(8, 1)
    y[:3] *= 1e4  # huge residuals: gradients far above the clip norm

    def loss(m, b):
        return F.mse_loss(m(b[0]), b[1])

    clip = 10.0
    truth = _per_sample_truth(model, loss, [x, y]).norm(dim=1)
    assert bool((truth[:3] > 100 * clip).all()) and bool((truth[3:] < clip).all())
    expected = _opacus_grads(model, loss, [x, y], clip, expected=8)
    grads, norms = _bookkeeping_grads(model, loss, [x, y], clip, expected=8)
    torch.testing.assert_close(norms, truth, rtol=1e-5, atol=0)
    _assert_same(grads, expected)


class _Shared(nn.Module):
    """Layers Opacus 1.6 hooks get wrong: Embedding(padding_idx), reflect-padded conv; plus one
    Linear called twice (its per-sample gradient is the sum over both calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4, padding_idx=0)
        self.conv = nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect")
        self.twice = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.embed(idx).transpose(1, 2)).transpose(1, 2)  # (B, T, 4)
        h = self.twice(torch.tanh(self.twice(h)))
        return self.head(h.mean(1))


def test_exact_where_opacus_hooks_are_not():
    torch.manual_seed(5)
    model = _Shared()
    idx = torch.randint(0, 10, (5, 6))
    idx[0, :3] = 0  # padding positions
    idx[1] = 7  # one token repeated
    batch = [idx, torch.randint(0, 2, (5,))]
    truth = _per_sample_truth(model, _ce_loss, batch)
    grads, norms = _bookkeeping_grads(model, _ce_loss, batch, clip=1e6, expected=1)
    torch.testing.assert_close(norms, truth.norm(dim=1), rtol=1e-5, atol=0)
    assert (_flat(grads) - truth.sum(0)).norm() <= 1e-5 * truth.sum(0).norm()
    assert grads[0][0].abs().max() == 0  # the padding row of the embedding gets nothing


class _ConvPaths(nn.Module):
    """A conv with few output positions per sample (2 calls x 9: ghost norm on the unfolded input,
    18 * (288 + 32) <= 288 * 32) and one with many (per-sample gradients through the backend's
    grouped weight-gradient kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.few = nn.Conv2d(64, 64, 3, padding=1, groups=2)  # K = 32 * 9 = 288, 32 outputs per group
        self.many = nn.Conv1d(64, 4, 5, stride=2, padding=2)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.few(torch.tanh(self.few(x)))  # (B, 64, 3, 3)
        h = self.many(h.flatten(2).repeat(1, 1, 4))  # (B, 4, 18)
        return self.head(h.mean(-1))


def test_conv_ghost_and_per_sample_paths_are_exact():
    torch.manual_seed(10)
    model = _ConvPaths()
    batch = [torch.randn(4, 64, 3, 3), torch.randint(0, 2, (4,))]
    truth = _per_sample_truth(model, _ce_loss, batch)
    grads, norms = _bookkeeping_grads(model, _ce_loss, batch, clip=1e6, expected=1)
    torch.testing.assert_close(norms, truth.norm(dim=1), rtol=1e-5, atol=0)
    assert (_flat(grads) - truth.sum(0)).norm() <= 1e-5 * truth.sum(0).norm()


def test_physical_batches_accumulate_to_the_logical_batch():
    torch.manual_seed(6)
    model, batch = _event_model(dropout=0.0), _event_batch()
    whole, _ = _bookkeeping_grads(model, _event_loss, batch, clip=0.1, expected=6)
    split = copy.deepcopy(model)
    engine = BookkeepingDP(split, 0.1, 0.0, 6)
    for part in (slice(0, 4), slice(4, 6)):
        _event_loss(split, [t[part] for t in batch]).backward()  # mean over the physical batch
        engine.clip_and_accumulate()
    engine.privatize_grads()
    _assert_same([p.grad for p in engine._params], whole)


def test_noise_has_the_right_std():
    torch.manual_seed(7)
    model = nn.Linear(100, 100)
    batch = [torch.randn(4, 100), torch.randint(0, 100, (4,))]
    clean, _ = _bookkeeping_grads(model, _ce_loss, batch, clip=0.5, expected=4, seed=11)
    noisy, _ = _bookkeeping_grads(model, _ce_loss, batch, clip=0.5, expected=4, seed=11, noise=2.0)
    noise = _flat(noisy) - _flat(clean)  # 10,100 draws of N(0, (sigma C / expected)^2)
    assert noise.std().item() == pytest.approx(2.0 * 0.5 / 4, rel=0.03)
    assert abs(noise.mean().item()) < 3 * 0.25 / noise.numel() ** 0.5


def test_bf16_autocast_gives_finite_grads_close_to_fp32():
    torch.manual_seed(8)
    model, batch = _event_model(dropout=0.0), _event_batch()
    reference, ref_norms = _bookkeeping_grads(model, _event_loss, batch, clip=0.5, expected=6)
    work = copy.deepcopy(model)
    engine = BookkeepingDP(work, 0.5, 0.0, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _event_loss(work, batch)
    loss.backward()
    engine.privatize_grads()
    grads = [p.grad for p in engine._params]
    assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
    assert engine.per_sample_norms.dtype == torch.float32
    torch.testing.assert_close(engine.per_sample_norms, ref_norms, rtol=0.05, atol=0)
    assert (_flat(grads) - _flat(reference)).norm() <= 0.05 * _flat(reference).norm()


def test_empty_batch_gives_pure_noise():
    model = _event_model(dropout=0.0)
    engine = BookkeepingDP(model, 1.0, 0.0, 6)
    _event_loss(model, [t[:0] for t in _event_batch()]).backward()
    engine.privatize_grads()
    assert all(bool((p.grad == 0).all()) for p in engine._params)


def test_unsupported_parameters_are_listed_and_remove_restores():
    class WithQuery(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query = nn.Parameter(torch.zeros(4))
            self.gru = nn.GRU(4, 4)
            self.linear = nn.Linear(4, 4)

    model = WithQuery()
    assert not BookkeepingDP.supports(model)
    with pytest.raises(UnsupportedLayerError) as err:
        BookkeepingDP(model, 1.0, 1.0, 8)
    assert "query (WithQuery has no book-keeping rule)" in str(err.value)
    assert "gru.weight_ih_l0" in str(err.value) and "linear" not in str(err.value)

    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    assert uncovered_parameters(tied) == ["1.weight (shared with 0.weight)"]

    ok = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    engine = BookkeepingDP(ok, 1.0, 1.0, 8)
    assert not any(p.requires_grad for p in ok.parameters())
    engine.remove()
    assert all(p.requires_grad for p in ok.parameters())
    assert not ok[0]._forward_hooks


def _mlp_setup(n=120):
    torch.manual_seed(0)
    x = torch.randn(n, 4)
    y = (x[:, 0] > 0).float()
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 1))

    def loss(m, b):
        return F.binary_cross_entropy_with_logits(m(b[0]).squeeze(-1), b[1])

    return model, TensorDataset(x, y), loss


@pytest.mark.parametrize("physical", [None, 7])
@pytest.mark.parametrize("mode", ["bookkeeping", "ghost"])
def test_train_model_modes_match_hooks(mode, physical):
    results = {}
    for m in ("hooks", mode):
        model, ds, loss = _mlp_setup(100)  # 100 / 30: Opacus samples at 1 / ceil(100 / 30)
        s = TrainSettings(
            epochs=2,
            expected_batch_size=30,
            max_physical_batch_size=physical,
            noise_multiplier=0.0,
            seed=3,
            dp_seed=3,  # the same Poisson masks in both modes (reproducible DP randomness)
            optimizer="sgd",
            lr=0.1,
            grad_sample_mode=m,
        )
        res = train_model(model, ds, loss, s)
        results[m] = (res, _flat(model.parameters()).detach())
    (hooks, w_hooks), (other, w_other) = results["hooks"], results[mode]
    assert other.steps == hooks.steps and other.sample_rate == hooks.sample_rate
    assert other.grad_sample_mode == mode and hooks.grad_sample_mode == "hooks"
    assert (w_other - w_hooks).abs().max() < 1e-5


def test_train_model_bookkeeping_steps_and_noise():
    model, ds, loss = _mlp_setup()
    before = _flat(model.parameters()).detach().clone()
    res = train_model(
        model,
        ds,
        loss,
        TrainSettings(
            epochs=2, expected_batch_size=30, noise_multiplier=1.0, seed=1, grad_sample_mode="auto"
        ),
    )
    assert res.grad_sample_mode == "bookkeeping"
    assert res.steps == 2 * steps_per_epoch(120, 30) == 8 and res.sample_rate == pytest.approx(0.25)
    assert not torch.equal(before, _flat(model.parameters()))
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("mode", ["hooks", "bookkeeping"])
def test_fedprox_term_survives_dp(mode):
    weights = []
    for mu in (0.0, 10.0):
        model, ds, loss = _mlp_setup()
        train_model(
            model,
            ds,
            loss,
            TrainSettings(
                expected_batch_size=30,
                noise_multiplier=0.0,
                seed=1,
                optimizer="sgd",
                lr=0.1,
                proximal_mu=mu,
                grad_sample_mode=mode,
            ),
        )
        weights.append(_flat(model.parameters()).detach())
    assert (weights[0] - weights[1]).abs().max() > 1e-3


def test_ghost_mode_names_its_failure():
    model = nn.Sequential(nn.Linear(3, 4), nn.Flatten(1), nn.Linear(8, 1))  # (B, 2, 3) input: fine
    deep = nn.Sequential(nn.Linear(3, 4), nn.Flatten(1), nn.Linear(16, 1))  # (B, 2, 2, 3): no ghost norm
    for m, shape, ok in ((model, (40, 2, 3), True), (deep, (40, 2, 2, 3), False)):
        ds = TensorDataset(torch.randn(*shape), torch.randn(40))

        def loss(mm, b):
            return F.mse_loss(mm(b[0]).squeeze(-1), b[1])

        s = TrainSettings(expected_batch_size=10, noise_multiplier=1.0, seed=0, grad_sample_mode="ghost")
        if ok:
            assert train_model(m, ds, loss, s).grad_sample_mode == "ghost"
        else:
            with pytest.raises(
                RuntimeError, match="Opacus ghost clipping fails on Sequential.*use 'bookkeeping'"
            ):
                train_model(m, ds, loss, s)


def test_auto_falls_back_to_hooks():
    assert resolve_grad_sample_mode("auto", nn.Sequential(nn.Linear(3, 3), nn.GRU(3, 3))) == "hooks"
    assert resolve_grad_sample_mode("auto", _event_model()) == "bookkeeping"
    with pytest.raises(ValueError, match="unknown grad_sample_mode"):
        resolve_grad_sample_mode("fast", _event_model())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_has_no_host_sync_and_matches_cpu():
    torch.manual_seed(9)
    model, batch = _event_model(dropout=0.0), _event_batch()
    reference, _ = _bookkeeping_grads(model, _event_loss, batch, clip=0.1, expected=6)
    work = copy.deepcopy(model).cuda()
    engine = BookkeepingDP(work, 0.1, 0.0, 6)
    batch = [t.cuda() for t in batch]
    _event_loss(work, batch).backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.privatize_grads()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    _assert_same([p.grad.cpu() for p in engine._params], reference, rel=1e-4)
