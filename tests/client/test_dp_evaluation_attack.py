"""The crafted-model evaluation attack (issue 17), played for real against a site.

The center sends a model whose output is one feature of the patient: logit = standardised age (every
other weight zero). With exact metrics, the Youden `threshold` the site returns is one validation patient's
sigmoid(age) to 6 digits, i.e. that patient's age. Under DP evaluation the site releases only noisy score
histograms: no released number is any patient's value, and even an attacker who knows every other
validation patient cannot tell which bin the target's value is in.
"""

import json

import numpy as np
import pytest
import torch

from client.site_worker import EVALUATE_PHASE, SiteSettings, SiteWorker
from server.history import RunHistory
from shared.config import config_from_dict
from shared.privacy.accountant import Mechanism, epsilon_independent, epsilon_opacus
from shared.privacy.audit import audit_ledger, audit_table
from shared.privacy.dp_evaluation import (
    HIST_NEG,
    HIST_POS,
    bin_centers,
    bin_edges,
    bin_index,
    release_binary,
    score_histograms,
)
from shared.privacy.keys import load_public_key
from shared.privacy.planner import plan_noise_multiplier
from shared.tasks.registry import build_task
from shared.training.dp_trainer import sample_rate_for, steps_per_epoch

SITE = "site_a"
RAW = {
    "task": "event_mortality",
    "data": {"sites": [SITE], "synth_sizes": [480], "max_events": 8, "text_dim": 8},
    "model": {"name": "event_transformer", "d_model": 8, "layers": 0, "heads": 2, "ff": 16, "pooling_heads": 1,
              "mlp_hidden": 8, "max_pooling": True, "linear_skip": True},
    "train": {"rounds": 3, "local_epochs": 1, "batch_size": 64, "lr": 0.1, "optimizer": "sgd"},
    "privacy": {"target_epsilon": 4.0, "evaluation": {"noise_multiplier": 4.0, "bins": 20}},
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpeval")
    raw = json.loads(json.dumps(RAW))
    raw["data"]["root"] = str(root / "data")
    cfg = config_from_dict(raw, "dpeval.yaml")
    build_task(cfg).synthesize(root / "data", [SITE], cfg.seed)
    torch.set_num_threads(1)
    return cfg, root


def _worker(site, name):
    cfg, root = site
    return SiteWorker(cfg, SiteSettings(SITE, root / "data" / SITE, root / name / SITE), f"run-{name}")


def _crafted_model(worker) -> dict[str, torch.Tensor]:
    """Every weight zero except the linear read-out of the first static feature (standardised age): logit = age."""
    state = {k: torch.zeros_like(v) for k, v in worker.task.build_model().state_dict().items()}
    state["skip.weight"][0, worker.cfg.model.params["d_model"]] = 1.0  # after the max-pooled events
    return state


def _val_scores(worker) -> tuple[np.ndarray, np.ndarray]:
    """What the crafted model outputs per validation patient (sigmoid of its standardised age), and labels."""
    statics, labels = worker.data.val.tensors[2], worker.data.val.tensors[-1]
    return torch.sigmoid(statics[:, 0]).numpy().astype(float), labels.numpy().astype(int)


def test_exact_metrics_leak_one_patients_value_to_six_digits(site, monkeypatch):
    """The attack as it worked before: with exact metrics (today only where a site policy allows them) the
    returned threshold is one validation patient's age."""
    worker = _worker(site, "exact")
    monkeypatch.setattr(SiteWorker, "exact_metrics_allowed", property(lambda self: True))
    metrics = worker.evaluate(_crafted_model(worker), server_round=1)
    scores, _ = _val_scores(worker)
    assert metrics["exact_metrics"] == 1
    assert np.abs(scores - metrics["threshold"]).min() < 1e-6  # some patient's sigmoid(age), to 6 digits
    assert worker.ledger.entries() == []  # exact metrics are not accounted: outside the guarantee


def test_dp_release_contains_no_patients_value_and_is_counted_in_the_ledger_and_the_audit(site):
    worker = _worker(site, "dp")
    state = _crafted_model(worker)
    metrics = worker.evaluate(state, server_round=1)
    scores, labels = _val_scores(worker)
    bins = worker.cfg.privacy.evaluation.bins
    assert set(metrics) == {HIST_POS.format(b) for b in range(bins)} | {HIST_NEG.format(b) for b in range(bins)} | {
        "num-examples"}
    released = np.array(list(metrics.values()))
    # no number is any patient's score to the precision the exact-metric attack reached (1e-6); a noisy count
    # lands that close to one of the scores by chance with probability ~1e-3 (41 values, 120 scores, sigma 4)
    assert np.abs(released[:, None] - scores[None, :]).min() > 1e-6
    # what the center derives: a threshold on the bin grid, never a patient's value
    history = RunHistory(site[1] / "center", [SITE])
    history.record_evaluate(1, SITE, metrics)
    derived = history.evaluations(1)[SITE]
    assert np.abs(bin_edges(bins) - derived["threshold"]).min() < 1e-12  # a fixed bin edge
    exact = np.concatenate(score_histograms(labels, scores, bins))
    assert np.abs(released - np.append(exact, len(labels))).max() > 1.0  # the counts are noised
    # the release is one Gaussian mechanism in the ledger, planned with the training noise
    entries = worker.ledger.entries()
    assert len(entries) == 1 and entries[0]["extra"]["phase"] == EVALUATE_PHASE and entries[0]["status"] == "trained"
    assert entries[0]["mechanism"] == {"noise_multiplier": 4.0, "sample_rate": 1.0, "steps": 1}
    assert entries[0]["cumulative_epsilon"] == pytest.approx(epsilon_opacus([Mechanism(4.0, 1.0, 1)], 1e-5))
    # asked again for the same model: the same release, no new cost; another model that round: refused
    assert worker.evaluate(state, server_round=1) == metrics and len(worker.ledger.entries()) == 1
    other = {k: v + 0.01 for k, v in state.items()}
    assert worker.evaluate_round(other, server_round=1).status == "refused"
    audit = audit_ledger(worker.ledger.path, load_public_key(worker.settings.state_dir / "keys" / f"{SITE}.pub"))
    assert audit.status == "ok" and audit.evaluation_releases == 1 and audit.rounds_trained == 0
    assert audit.evaluation_epsilon == pytest.approx(epsilon_independent([Mechanism(4.0, 1.0, 1)], 1e-5))
    table = audit_table([audit])
    assert "of it evaluation eps" in table and f"{audit.evaluation_epsilon:.4f} (1)" in table


def test_the_strongest_attacker_cannot_locate_the_target_in_the_dp_release(site):
    """An attacker who knows every validation patient but the target subtracts their histogram from the
    release and guesses the target's bin (hence its age). Under the DP release (noise 4 per count, the
    single patient's difference 1) the guess is near chance and the estimate error is of the order of the
    spread of ages; with the noise removed the same attack finds the bin every time."""
    worker = _worker(site, "attacker")
    scores, labels = _val_scores(worker)
    bins, sigma = worker.cfg.privacy.evaluation.bins, worker.cfg.privacy.evaluation.noise_multiplier
    rng = np.random.default_rng(0)
    spread = np.std(np.log(scores / (1 - scores)))  # standardised age across the validation patients: ~1

    def attack(noise: float, trials: int = 300) -> tuple[float, float]:
        hits, errors = 0, []
        for _ in range(trials):
            target = int(rng.integers(len(scores)))
            others = np.delete(np.arange(len(scores)), target)
            known = np.concatenate(score_histograms(labels[others], scores[others], bins))
            release = np.array(list(release_binary(labels, scores, bins, noise, rng).values()))
            guess = int(np.argmax(release - known)) % bins
            truth = int(bin_index(scores[target : target + 1], bins)[0])
            hits += guess == truth
            estimate = bin_centers(bins)[guess]
            errors.append(abs(np.log(estimate / (1 - estimate)) - np.log(scores[target] / (1 - scores[target]))))
        return hits / trials, float(np.mean(errors))

    accuracy, error = attack(sigma)
    assert accuracy < 0.2 and error > 0.5 * spread  # near chance (1/20 .. the ~0.1 a 1-vs-4 signal allows)
    accuracy_without_noise, error_without_noise = attack(1e-9, trials=50)
    assert accuracy_without_noise == 1.0 and error_without_noise < 0.2 * spread


def test_training_noise_is_planned_with_the_runs_evaluation_releases(site):
    worker = _worker(site, "plan")
    cfg = worker.cfg
    n, t = worker.data.n_train, cfg.train
    q, steps = sample_rate_for(n, t.batch_size), t.rounds * t.local_epochs * steps_per_epoch(n, t.batch_size)
    alone = plan_noise_multiplier(4.0, cfg.privacy.delta, q, steps)
    planned = worker.plan().noise_multiplier
    assert planned > alone  # training gives up part of the one target to the three evaluation releases
    with_eval = [Mechanism(planned, q, steps)] + [Mechanism(4.0, 1.0, 1)] * 3
    assert epsilon_opacus(with_eval, cfg.privacy.delta) <= 4.0 + 1e-6
    assert worker.planned_evaluation() == [Mechanism(4.0, 1.0, 1)] * 3


def test_a_center_that_asks_outside_the_release_rounds_gets_nothing_and_costs_nothing(site):
    """`privacy.evaluation.rounds: final`: the honest center no longer asks in rounds 1-2 (server/strategy.py),
    but that is only its courtesy. A modified center asks anyway, with the crafted model: the site itself
    releases nothing, spends nothing, and still releases the final round's histograms."""
    cfg, root = site
    final = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(
        update={"evaluation": cfg.privacy.evaluation.model_copy(update={"rounds": "final"})})})
    worker = SiteWorker(final, SiteSettings(SITE, root / "data" / SITE, root / "final" / SITE), "run-final")
    state = _crafted_model(worker)
    for server_round in (1, 2):
        assert worker.evaluate(state, server_round=server_round) == {}
    assert worker.ledger.entries() == []
    released = worker.evaluate(state, server_round=final.total_rounds)
    assert HIST_POS.format(0) in released and len(worker.ledger.entries()) == 1
