import math

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter

from shared.losses.survival import CoxPHLoss, cox_ph_loss, multi_cox_ph_loss


def _tied_censored_data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer times (many tied events, events tied with censorings) and two covariates."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    time = np.ceil(rng.exponential(np.exp(-(0.8 * x[:, 0] - 0.5 * x[:, 1])) * 4)).astype(float)
    event = (rng.random(n) < 0.7).astype(float)
    return x, time, event


def _numpy_partial_log_likelihood(risk: np.ndarray, time: np.ndarray, event: np.ndarray, ties: str) -> float:
    """Textbook loops over distinct event times (Breslow / Efron), independent of the torch code."""
    total = 0.0
    for t in np.unique(time[event == 1]):
        tied = (time == t) & (event == 1)
        at_risk = time >= t
        m = tied.sum()
        total += risk[tied].sum()
        for ell in range(m):
            fraction = ell / m if ties == "efron" else 0.0
            total -= math.log(np.exp(risk[at_risk]).sum() - fraction * np.exp(risk[tied]).sum())
    return total


def _as_tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.tensor(a, dtype=torch.float64) for a in arrays]


def test_efron_matches_lifelines_fit() -> None:
    x, time, event = _tied_censored_data()
    assert len(np.unique(time[event == 1])) < event.sum() and ((time == 1) & (event == 0)).any()
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "T": time, "E": event})
    fitter = CoxPHFitter(penalizer=0.0).fit(frame, duration_col="T", event_col="E")  # Efron ties
    beta = torch.tensor(fitter.params_[["x0", "x1"]].to_numpy(), requires_grad=True)
    x_t, time_t, event_t = _as_tensors(x, time, event)
    loss = cox_ph_loss(x_t @ beta, time_t, event_t, ties="efron")
    assert loss.item() == pytest.approx(-fitter.log_likelihood_ / event.sum(), abs=1e-5)
    (gradient,) = torch.autograd.grad(loss, beta)
    assert gradient.abs().max() < 1e-5  # lifelines' beta maximizes our Efron likelihood too


@pytest.mark.parametrize("ties", ["breslow", "efron"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_loops(ties: str, seed: int) -> None:
    x, time, event = _tied_censored_data(seed=seed)
    risk = x @ np.array([0.7, -0.3])
    expected = -_numpy_partial_log_likelihood(risk, time, event, ties) / event.sum()
    ours = cox_ph_loss(*_as_tensors(risk, time, event), ties=ties)
    assert ours.item() == pytest.approx(expected, abs=1e-10)


def test_ties_methods_agree_without_ties_and_differ_with_them() -> None:
    risk, time, event = _as_tensors(np.array([0.3, -1.0, 2.0, 0.1]), np.arange(1, 5), np.array([1, 0, 1, 1]))
    breslow, efron = (cox_ph_loss(risk, time, event, ties) for ties in ("breslow", "efron"))
    torch.testing.assert_close(breslow, efron)
    time[1], event[1] = 1.0, 1.0  # two events at t = 1
    assert cox_ph_loss(risk, time, event, "breslow") > cox_ph_loss(risk, time, event, "efron")


def test_invariances_and_stability() -> None:
    x, time, event = _tied_censored_data(seed=2)
    risk, time_t, event_t = _as_tensors(x @ np.array([1.0, 0.5]), time, event)
    base = cox_ph_loss(risk, time_t, event_t, "efron")
    torch.testing.assert_close(cox_ph_loss(risk + 7.0, time_t, event_t, "efron"), base)  # shift
    order = torch.randperm(len(time), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cox_ph_loss(risk[order], time_t[order], event_t[order], "efron"), base)
    huge = cox_ph_loss((risk * 500).float(), time_t.float(), event_t.float(), "efron")
    assert torch.isfinite(huge)


def test_no_events_gives_zero_with_graph() -> None:
    risk = torch.randn(5, requires_grad=True)
    loss = cox_ph_loss(risk, torch.arange(5.0), torch.zeros(5))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(risk.grad, torch.zeros(5))
    with pytest.raises(ValueError, match="ties"):
        cox_ph_loss(risk, torch.arange(5.0), torch.ones(5), ties="exact")


def test_multi_task_averages_tasks_with_events() -> None:
    torch.manual_seed(0)
    risks, times = torch.randn(8, 3), torch.randint(1, 5, (8, 3)).float()
    events = torch.stack([torch.rand(8) < 0.6, torch.zeros(8, dtype=torch.bool), torch.rand(8) < 0.6], dim=1)
    task_0, task_2 = (cox_ph_loss(risks[:, k], times[:, k], events[:, k]) for k in (0, 2))
    torch.testing.assert_close(multi_cox_ph_loss(risks, times, events), (task_0 + task_2) / 2)
    torch.testing.assert_close(CoxPHLoss()(risks, times, events), (task_0 + task_2) / 2)
    single_efron = CoxPHLoss("efron")(risks[:, 0], times[:, 0], events[:, 0])
    torch.testing.assert_close(single_efron, cox_ph_loss(risks[:, 0], times[:, 0], events[:, 0], "efron"))
    assert multi_cox_ph_loss(risks, times, torch.zeros(8, 3)).item() == 0.0
