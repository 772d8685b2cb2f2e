"""`fedcare explain` at a site: a checkpoint + the site's data and state folders -> a report in
state/explanations/<run>_round_<N>/ (or --out); bad input exits 2 with a one-line error."""

import importlib.machinery
import json
import sys
import types

import pytest
import torch

from client.site_worker import SiteSettings
from fedcare.cli import build_parser, main
from server.checkpoints import save_checkpoint
from tests.shared.explain.explain_fixtures import tiny_model, tiny_site


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny forward passes: one thread is faster on a busy 2-core machine
    root = tmp_path_factory.mktemp("cli")
    site = tiny_site(root, n=30)
    cfg = site.cfg
    cfg.explain.patients = 2
    ckpt = root / "runs" / "r1" / "checkpoints" / "round_002.pt"
    save_checkpoint(ckpt, tiny_model(cfg).state_dict(), {"config": cfg.to_dict(), "round": 2, "run_id": "r1", "task": cfg.task})
    yield site, ckpt
    torch.set_num_threads(threads)


def test_explain_writes_the_report_into_the_site_state_folder(setup, capsys):
    site, ckpt = setup
    code = main(["explain", "--checkpoint", str(ckpt), "--data", str(site.site_dir), "--state", str(site.state_dir)])
    assert code == 0
    folder = site.state_dir / "explanations" / "r1_round_002"
    numbers = json.loads((folder / "explanations.json").read_text())
    assert len(numbers["patients"]) == 2  # the run's explain.patients
    assert (folder / "report.html").is_file() and (folder / "report.md").is_file()
    assert "stays at this site" in capsys.readouterr().out


def test_explain_named_patients_into_out(setup, tmp_path):
    site, ckpt = setup
    wanted = [str(site.ids[3]), str(site.ids[0])]
    code = main(["explain", "--checkpoint", str(ckpt), "--data", str(site.site_dir), "--state", str(site.state_dir),
                 "--patients", ",".join(wanted), "--out", str(tmp_path / "rep")])
    assert code == 0
    numbers = json.loads((tmp_path / "rep" / "explanations.json").read_text())
    assert [p["patient_id"] for p in numbers["patients"]] == wanted


def test_explain_bad_input_exits_2(setup, tmp_path, capsys):
    site, ckpt = setup
    base = ["explain", "--checkpoint", str(ckpt), "--data", str(site.site_dir), "--state", str(site.state_dir)]
    assert main(base + ["--patients", "123", "--out", str(tmp_path / "x")]) == 2
    assert "patients: unknown patient id(s) at this site: 123" in capsys.readouterr().out
    assert main(["explain", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(site.site_dir),
                 "--state", str(site.state_dir)]) == 2
    assert "checkpoint not found" in capsys.readouterr().out


def _explain_options() -> dict:
    return build_parser()._subparsers._group_actions[0].choices["explain"]._option_string_actions


def test_site_config_gives_data_and_state(setup, tmp_path, monkeypatch):
    """With client.site_config present (deployment), --site-config replaces --data/--state."""
    site, ckpt = setup
    fake = types.ModuleType("client.site_config")
    fake.__spec__ = importlib.machinery.ModuleSpec("client.site_config", None)
    fake.load_site_config = lambda path: SiteSettings(site="site_a", data_dir=site.site_dir, state_dir=site.state_dir,
                                                      source=str(path))
    monkeypatch.setitem(sys.modules, "client.site_config", fake)
    assert "--site-config" in _explain_options()
    code = main(["explain", "--checkpoint", str(ckpt), "--site-config", str(tmp_path / "site.yaml"), "--n-patients", "1",
                 "--out", str(tmp_path / "rep")])
    assert code == 0
    assert len(json.loads((tmp_path / "rep" / "explanations.json").read_text())["patients"]) == 1


def test_site_config_flag_only_when_the_module_exists(monkeypatch):
    monkeypatch.setitem(sys.modules, "client.site_config", None)  # import of it fails: not offered
    assert "--site-config" not in _explain_options()
