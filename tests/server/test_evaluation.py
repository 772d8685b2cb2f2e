import pytest

from server.evaluation import decision_threshold, pooled_calibration, pooled_metrics, site_calibration, weighted_mean
from server.history import RunHistory

SITES = {
    "a": {"num-examples": 300, "auroc": 0.80, "auroc_ci_low": 0.75, "auroc_ci_high": 0.85, "threshold": 0.30, "ece": 0.05,
          "calib_bin_0_count": 200, "calib_bin_0_observed": 0.05, "calib_bin_0_predicted": 0.04,
          "calib_bin_3_count": 100, "calib_bin_3_observed": 0.40, "calib_bin_3_predicted": 0.35},
    "b": {"num-examples": 100, "auroc": 0.60, "auroc_ci_low": 0.45, "auroc_ci_high": 0.74, "threshold": 0.50, "ece": 0.10,
          "calib_bin_0_count": 100, "calib_bin_0_observed": 0.20, "calib_bin_0_predicted": 0.06},
    "c": {"num-examples": 50, "ece": 0.2},  # single-class validation split: no AUROC, no threshold
}


def test_weighted_mean_and_threshold_weight_by_validation_size() -> None:
    assert weighted_mean(SITES, "auroc") == pytest.approx((0.8 * 300 + 0.6 * 100) / 400)
    assert weighted_mean(SITES, "ece") == pytest.approx((0.05 * 300 + 0.10 * 100 + 0.2 * 50) / 450)
    assert decision_threshold(SITES) == pytest.approx((0.3 * 300 + 0.5 * 100) / 400)
    assert weighted_mean(SITES, "kappa") is None and decision_threshold({}) is None


def test_pooled_metrics_report_weighted_mean_ci_range_and_random_effects() -> None:
    pooled = pooled_metrics(SITES)
    assert set(pooled) == {"auroc"}  # only metrics with CIs
    auroc = pooled["auroc"]
    assert auroc["weighted_mean"] == pytest.approx(0.75)
    assert (auroc["site_ci_min"], auroc["site_ci_max"], auroc["n_sites"]) == (0.45, 0.85, 2)
    re_ = auroc["random_effects"]
    assert re_["n_sites"] == 2 and re_["method"] == "DerSimonian-Laird random effects"
    assert 0.6 < re_["estimate"] < 0.8 and re_["ci_low"] < re_["estimate"] < re_["ci_high"]
    assert re_["tau2"] > 0  # 0.80 vs 0.60 with these CIs: the sites disagree


def test_pooled_calibration_sums_counts_over_the_sites_that_sent_a_bin() -> None:
    bins = pooled_calibration(SITES)
    assert [b["bin"] for b in bins] == [0, 3]
    first = bins[0]
    assert first["count"] == 300 and first["n_sites"] == 2
    assert first["observed"] == pytest.approx((0.05 * 200 + 0.20 * 100) / 300)
    assert first["predicted"] == pytest.approx((0.04 * 200 + 0.06 * 100) / 300)
    assert bins[1] == {"bin": 3, "count": 100, "observed": 0.40, "predicted": 0.35, "n_sites": 1}
    assert [b["bin"] for b in site_calibration(SITES["b"])] == [0] and site_calibration(SITES["c"]) == []


def test_history_keeps_calibration_bins_and_ci_bounds_out_of_weighted_metrics(tmp_path) -> None:
    history = RunHistory(tmp_path, list(SITES))
    for site, values in SITES.items():
        history.record_evaluate(1, site, values)
    assert history.weighted_metrics() == ["auroc", "ece", "threshold"]
    assert history.evaluations(1)["b"]["auroc"] == 0.6
    assert history.weighted(1, "auroc") == pytest.approx(0.75)


def test_a_rounds_table_and_files_are_written_in_the_background_and_the_history_waits_for_them(tmp_path):
    """`publish_round` returns before its files exist; the next change to the history waits for them, so a
    pending write never reads a half-changed history."""
    import json
    import threading

    from rich.console import Console

    from server.history import LEDGER_HEADS_FILE, RunHistory

    release, seen = threading.Event(), []
    history = RunHistory(tmp_path, ["site_a"], console=Console(quiet=True))
    history.record_train(1, "site_a", "trained", "", {"epsilon": 1.5}, ledger_head="a" * 64)
    original = history._write_files

    def held_write():
        release.wait(30)
        seen.append(history.to_dict()["rounds"])
        original()

    history._write_files = held_write
    history.publish_round(1, 2)
    assert not (tmp_path / "metrics.json").exists()
    changer = threading.Thread(target=history.record_train, args=(2, "site_a", "trained", "", {"epsilon": 2.5}))
    changer.start()
    changer.join(0.3)
    assert changer.is_alive() and 2 not in history.rounds  # the change waits for the pending write
    release.set()
    changer.join(30)
    assert seen == [{"1": {"site_a": {"status": "trained", "reason": "", "train": {"epsilon": 1.5}, "ledger_head": "a" * 64}}}]
    history.save()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["rounds"]) == {"1", "2"} and (tmp_path / LEDGER_HEADS_FILE).is_file()
