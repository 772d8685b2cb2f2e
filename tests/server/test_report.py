"""The run report on a real run folder: 3 tiny sites x 2 rounds trained by the real site workers
(DP-SGD, signed ledgers, whitelisted metrics), FedAvg by hand, and the center's own writers
(history, checkpoints, summary, audit), without Flower's runtime. site_a releases DP evaluation statistics;
site_b's policy allows exact metrics, which the report marks as outside the guarantee."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from client.site_worker import SiteSettings, SiteWorker
from fedcare.audit_run import audit_path
from fedcare.cli import main as cli_main
from fedcare.simulation import write_resolved_config
from server.checkpoints import checkpoint_path, save_checkpoint
from server.federation import run_summary
from server.history import RunHistory, write_json_atomic
from server.report import SECTIONS, write_run_report
from shared.config import config_from_dict
from shared.errors import InputError
from shared.privacy.accountant import Mechanism, epsilon_independent
from shared.privacy.audit import write_audit_json
from shared.tasks.registry import build_task

SITES = ["site_a", "site_b", "site_c"]
TINY = {
    "task": "event_mortality",
    "data": {"sites": SITES, "synth_sizes": [140, 100, 40], "max_events": 8, "text_dim": 8},
    "model": {"name": "event_transformer", "d_model": 8, "layers": 1, "heads": 2, "ff": 16, "pooling_heads": 2,
              "mlp_hidden": 8},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 32, "lr": 0.003},
    "privacy": {"target_epsilon": 4.0, "site_targets": {"site_c": 0.001}},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root / "data")
    cfg = config_from_dict(raw, "tiny.yaml")
    task = build_task(cfg)
    task.synthesize(root / "data", SITES, cfg.seed)
    run_dir = root / "runs" / "run-1"
    write_resolved_config(cfg, run_dir)
    history = RunHistory(run_dir, SITES, task.primary_metric)
    exact_policy = root / "site_b_policy.yaml"
    exact_policy.write_text("release: {exact_metrics: true}\n")
    workers = {
        site: SiteWorker(cfg, SiteSettings(site, root / "data" / site, run_dir / "sites" / site,
                                           policy=exact_policy if site == "site_b" else None), "run-1")
        for site in SITES
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only contend
    torch.manual_seed(cfg.seed)
    global_state = task.build_model().state_dict()
    save_checkpoint(checkpoint_path(run_dir, 0), global_state, {"config": cfg.to_dict(), "round": 0})
    for server_round in (1, 2):
        states, sizes = [], []
        for site, worker in workers.items():
            outcome = worker.train_round(server_round, global_state)
            history.record_train(server_round, site, outcome.status, outcome.reason, outcome.metrics)
            if outcome.arrays is not None:
                states.append(outcome.arrays)
                sizes.append(outcome.metrics["num-examples"])
        share = np.asarray(sizes, dtype=float) / sum(sizes)
        global_state = {k: sum(w * s[k] for w, s in zip(share, states)) for k in states[0]}
        for site, worker in workers.items():
            history.record_evaluate(server_round, site, worker.evaluate(global_state, server_round))
        save_checkpoint(checkpoint_path(run_dir, server_round), global_state, {"config": cfg.to_dict(), "round": server_round})
        history.save()
    torch.set_num_threads(threads)
    write_json_atomic(run_dir / "summary.json", run_summary(history, cfg, "run-1", run_dir, wall_time_s=1.0))
    write_audit_json(audit_path(run_dir), run_dir / "audit.json")
    explanation = run_dir / "sites" / "site_a" / "explanations" / "round_002" / "report.html"
    explanation.parent.mkdir(parents=True)
    explanation.write_text("<html>site_a explanations</html>")
    return run_dir


def _images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_report_has_every_section_and_every_image_exists(run_dir: Path) -> None:
    out = write_run_report(run_dir)
    assert out == run_dir / "report.html"
    page = out.read_text()
    for key in SECTIONS:
        assert f'<section id="{key}">' in page, key
    images = _images(page)
    assert {Path(i).name for i in images} == {"primary_metric.png", "epsilon.png", "calibration.png"}
    for src in images:
        path = out.parent / src
        assert not Path(src).is_absolute() and path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page  # opens offline
    assert not list(run_dir.rglob("*.tmp"))


def test_report_tables_show_the_run(run_dir: Path) -> None:
    page = write_run_report(run_dir).read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    final = json.loads((run_dir / "metrics.json").read_text())["rounds"]["2"]
    a, b = final["site_a"]["evaluate"], final["site_b"]["evaluate"]
    assert "release" in final["site_a"] and "release" not in final["site_b"]  # site_a sent noisy histograms
    metrics = page[page.index('id="metrics"'):page.index('id="curves"')]
    assert "<td>site_a</td><td>DP (noisy sufficient statistics)</td>" in metrics and f"{a['auroc']:.3f}" in metrics
    assert "<td>site_b</td><td>exact: OUTSIDE the DP guarantee</td>" in metrics
    assert f"{b['auroc']:.3f} [{b['auroc_ci_low']:.3f}, {b['auroc_ci_high']:.3f}]" in metrics
    assert "Outside the DP guarantee (the site policy allows exact metrics): site_b: auprc" in metrics
    assert summary["evaluation_privacy"]["outside_guarantee"] == {"site_b": sorted(k for k in b if k != "exact_metrics")}
    assert f"{summary['final_weighted']['auroc']:.3f}" in page
    notes = page[page.index('id="notes"'):page.index('id="metrics"')]
    assert "site_c" in notes and "budget_exhausted" in notes  # the dropped site is named
    privacy = page[page.index('id="privacy"'):page.index('id="explanations"')]
    assert privacy.count('<span class="ok">') == 3 and "recomputed epsilon" in privacy
    two_releases = epsilon_independent([Mechanism(4.0, 1.0, 1)] * 2, 1e-5)  # site_a's evaluations (site_b: exact)
    assert f"<td>{two_releases:.4f} (2)</td>" in privacy and f"<td>{0.0:.4f} (0)</td>" in privacy
    assert 'href="sites/site_a/explanations/round_002/report.html"' in page
    assert "target_epsilon: 4.0" in page  # the config block
    calibration = page[page.index('id="calibration"'):page.index('id="privacy"')]
    assert summary["final_calibration"]
    for b in summary["final_calibration"]:
        assert f"<td>{b['count']:.0f}</td><td>{b['n_sites']}</td>" in calibration
    recal = summary["recalibration"]  # fitted on site_a's noisy histograms (site_b sent exact bins: not mixed in)
    assert recal["method"] == "platt" and recal["fitted_on"] == "dp_score_histograms"
    assert "Federated recalibration" in calibration and f"<td>ECE before</td><td>{recal['ece_before']:.3f}</td>" in calibration


def test_cli_report_elsewhere_reruns_the_audit_when_absent(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run-copy"
    top_level = {"report.html", "report", "audit.json"}
    shutil.copytree(run_dir, copy, ignore=lambda folder, names: top_level if folder == str(run_dir) else set())
    out = tmp_path / "elsewhere" / "page.html"
    assert cli_main(["report", str(copy), "--out", str(out)]) == 0
    page = out.read_text()
    assert (tmp_path / "elsewhere" / "page").is_dir()
    for src in _images(page):
        assert (out.parent / src).is_file()
    privacy = page[page.index('id="privacy"'):page.index('id="explanations"')]
    assert privacy.count('<span class="ok">') == 3  # audited again from the ledgers
    assert not (copy / "audit.json").exists()  # the report does not write into the run folder
    assert 'href="../run-copy/sites/site_a/explanations/round_002/report.html"' in page


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="summary.json"):
        (tmp_path / "metrics.json").write_text("{}")
        write_run_report(tmp_path)
    with pytest.raises(InputError, match="no such run folder"):
        write_run_report(tmp_path / "missing")
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
