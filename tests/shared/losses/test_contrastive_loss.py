import math

import pytest
import torch
import torch.nn.functional as F

from shared.losses.contrastive import info_nce, multi_modal_info_nce, within_sample_info_nce


def test_two_by_two_hand_computation() -> None:
    z_a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalized: e1, e2
    z_b = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # normalized: (0.6, 0.8), e2
    temperature = 0.5
    # similarities S = [[0.6, 0], [0.8, 1]] / T; a->b rows, b->a columns, target = diagonal
    s = torch.tensor([[0.6, 0.0], [0.8, 1.0]]) / temperature
    a_to_b = -(s[0, 0] - torch.logsumexp(s[0], 0) + s[1, 1] - torch.logsumexp(s[1], 0)) / 2
    b_to_a = -(s[0, 0] - torch.logsumexp(s[:, 0], 0) + s[1, 1] - torch.logsumexp(s[:, 1], 0)) / 2
    expected = (a_to_b + b_to_a) / 2
    torch.testing.assert_close(info_nce(z_a, z_b, temperature), expected)
    row_0 = -math.log(math.exp(1.2) / (math.exp(1.2) + 1.0))  # a->b, sample 0, by hand
    row_1 = -math.log(math.exp(2.0) / (math.exp(1.6) + math.exp(2.0)))
    col_0 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6)))
    col_1 = -math.log(math.exp(2.0) / (1.0 + math.exp(2.0)))
    by_hand = (row_0 + row_1 + col_0 + col_1) / 4
    assert info_nce(z_a, z_b, temperature).item() == pytest.approx(by_hand, abs=1e-6)


def test_symmetric_in_its_arguments() -> None:
    torch.manual_seed(0)
    z_a, z_b = torch.randn(6, 8), torch.randn(6, 8)
    torch.testing.assert_close(info_nce(z_a, z_b), info_nce(z_b, z_a))
    torch.testing.assert_close(info_nce(z_a, z_b), info_nce(3 * z_a, 0.5 * z_b))  # L2-normalized


def test_aligned_orthogonal_pairs_and_temperature() -> None:
    z = torch.eye(4, 8)
    assert info_nce(z, z, temperature=0.07).item() < 1e-5  # log(1 + 3 exp(-1/0.07)) ~ 2e-6
    expected = torch.tensor(math.log(1 + 3 * math.exp(-2.0)))  # diagonal 1/T = 2, off-diagonal 0
    torch.testing.assert_close(info_nce(z, z, temperature=0.5), expected)
    torch.manual_seed(0)
    z_a = torch.randn(16, 8)
    z_b = z_a + 0.3 * torch.randn(16, 8)  # noisy but aligned pairs
    losses = [info_nce(z_a, z_b, t).item() for t in (1.0, 0.3, 0.07)]
    assert losses[0] > losses[1] > losses[2]
    logits = F.normalize(z_a, dim=1) @ F.normalize(z_b, dim=1).T / 0.07
    targets = torch.arange(16)
    reference = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
    torch.testing.assert_close(info_nce(z_a, z_b, 0.07), reference)


def test_multi_modal_averages_present_pairs() -> None:
    torch.manual_seed(0)
    emb = {name: torch.randn(5, 4, requires_grad=True) for name in ("resp", "bas", "ekg")}
    full = multi_modal_info_nce(emb)
    pairs = [("bas", "ekg"), ("bas", "resp"), ("ekg", "resp")]
    torch.testing.assert_close(full, sum(info_nce(emb[a], emb[b]) for a, b in pairs) / 3)
    masks = {
        "resp": torch.tensor([True, True, True, False, False]),
        "ekg": torch.tensor([True, False, False, False, True]),  # shares only 1 sample with resp
    }
    bas_ekg = info_nce(emb["bas"][masks["ekg"]], emb["ekg"][masks["ekg"]])
    bas_resp = info_nce(emb["bas"][masks["resp"]], emb["resp"][masks["resp"]])
    expected = (bas_ekg + bas_resp) / 2
    torch.testing.assert_close(multi_modal_info_nce(emb, masks), expected)


def test_multi_modal_without_pairs_is_zero_with_graph() -> None:
    emb = {"bas": torch.randn(3, 4, requires_grad=True), "ekg": torch.randn(3, 4, requires_grad=True)}
    masks = {"bas": torch.tensor([True, False, False]), "ekg": torch.tensor([False, True, True])}
    loss = multi_modal_info_nce(emb, masks)
    assert loss.item() == 0.0 and loss.requires_grad
    single = multi_modal_info_nce({"bas": emb["bas"]})
    assert single.item() == 0.0


def test_within_sample_info_nce_keeps_each_sample_loss_its_own() -> None:
    torch.manual_seed(0)
    z = torch.randn(3, 2, 4, 5, requires_grad=True)  # (B, M, N, E)
    present = torch.tensor([[True, True], [True, True], [True, False]])
    valid = torch.tensor([[True] * 4, [True, True, True, False], [True] * 4])
    loss = within_sample_info_nce(z, present, valid, ("BAS", "EKG"), temperature=0.07)
    # = mean over samples of info_nce between the sample's own epochs; sample 2 lacks EKG: adds 0
    expected = (info_nce(z[0, 0], z[0, 1], 0.07) + info_nce(z[1, 0, :3], z[1, 1, :3], 0.07)) / 3
    assert torch.allclose(loss, expected)
    (grad,) = torch.autograd.grad(info_nce(z[0, 0], z[0, 1], 0.07), z)
    assert grad[1:].abs().sum() == 0  # no other sample enters sample 0's term (DP-SGD's assumption)
    (grad,) = torch.autograd.grad(loss, z)
    assert grad[1, :, 3].abs().sum() == 0 and grad[2].abs().sum() == 0  # padding and a lone modality: no gradient
    empty = within_sample_info_nce(z[:0], present[:0], valid[:0], ("BAS", "EKG"))
    assert empty.item() == 0.0 and empty.requires_grad  # an empty Poisson batch


def test_within_sample_info_nce_temperature_sharpens_aligned_epochs() -> None:
    aligned = torch.eye(4).repeat(1, 2, 1, 1)  # (1, 2, 4, 4): both modalities agree on every epoch
    present, valid = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    sharp = within_sample_info_nce(aligned, present, valid, ("BAS", "RESP"), temperature=0.07)
    soft = within_sample_info_nce(aligned, present, valid, ("BAS", "RESP"), temperature=1.0)
    assert sharp.item() < 1e-5 < soft.item() == pytest.approx(-math.log(math.e / (math.e + 3)), rel=1e-5)
