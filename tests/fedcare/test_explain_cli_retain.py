"""`fedcare explain` end to end on a retain_aki site: checkpoint + the site's data and state folders
-> the report in state/explanations/<run>_round_<N>/, patients by name, bad ids refused."""

import json
import re

import pytest
import torch
from matplotlib.image import imread

from fedcare.cli import main
from server.checkpoints import save_checkpoint
from shared.data.visits import FEATURES
from tests.shared.explain.explain_fixtures import prepared_site, retain_config, tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny forward passes: one thread is faster on a busy 2-core machine
    root = tmp_path_factory.mktemp("cli_retain")
    site = prepared_site(retain_config(root / "data", sizes=[30], max_visits=6), root)
    cfg = site.cfg
    cfg.explain.patients = 2
    ckpt = root / "runs" / "r7" / "checkpoints" / "round_003.pt"
    save_checkpoint(ckpt, tiny_model(cfg).state_dict(), {"config": cfg.to_dict(), "round": 3, "run_id": "r7", "task": cfg.task})
    yield site, ckpt
    torch.set_num_threads(threads)


def test_explain_retain_site_into_the_state_folder(setup, capsys):
    site, ckpt = setup
    assert main(["explain", "--checkpoint", str(ckpt), "--data", str(site.site_dir), "--state", str(site.state_dir)]) == 0
    folder = site.state_dir / "explanations" / "r7_round_003"
    numbers = json.loads((folder / "explanations.json").read_text())
    assert numbers["task"] == "retain_aki" and numbers["source"] == "round_003.pt (run r7, round 3)"
    assert len(numbers["patients"]) == 2 and all(set(p["ablation_effects"]) == set(FEATURES) for p in numbers["patients"])
    links = re.findall(r"\]\(([^)]+\.png)\)", (folder / "report.md").read_text())
    assert len(links) == 3 + 2 * 2 and all(imread(folder / link).ndim == 3 for link in links)
    assert (folder / "report.html").is_file()
    assert "stays at this site" in capsys.readouterr().out


def test_explain_named_retain_patients(setup, tmp_path):
    site, ckpt = setup
    wanted = [str(site.ids[4]), str(site.ids[1])]
    code = main(["explain", "--checkpoint", str(ckpt), "--data", str(site.site_dir), "--state", str(site.state_dir),
                 "--patients", ",".join(wanted), "--out", str(tmp_path / "rep")])
    assert code == 0
    numbers = json.loads((tmp_path / "rep" / "explanations.json").read_text())
    assert [p["patient_id"] for p in numbers["patients"]] == wanted
    assert all(p["reasons"][0].split(" ")[0] in FEATURES for p in numbers["patients"])


def test_unknown_patient_and_missing_encoder_exit_2(setup, tmp_path, capsys):
    site, ckpt = setup
    base = ["explain", "--checkpoint", str(ckpt), "--data", str(site.site_dir)]
    assert main(base + ["--state", str(site.state_dir), "--patients", "nobody", "--out", str(tmp_path / "x")]) == 2
    assert "patients: unknown patient id(s) at this site: nobody" in capsys.readouterr().out
    (tmp_path / "empty_state").mkdir()
    assert main(base + ["--state", str(tmp_path / "empty_state"), "--out", str(tmp_path / "y")]) == 2
    assert "visit encoder not found" in capsys.readouterr().out
