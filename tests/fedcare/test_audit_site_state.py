"""`fedcare audit <state_dir>` on one site's state folder, at the path the README and the containers use
(/var/lib/fedcare: the folder's name is not the site's): the site name comes from --site or from the
site's site.yaml (which also gives the identity key that checks the signatures), never from the folder."""

from pathlib import Path

import pytest
import yaml

from fedcare.audit_run import audit_path
from fedcare.cli import main
from fedcare.site_keys import init_site_keys
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.keys import load_private_key
from shared.privacy.ledger import SiteLedger
from shared.privacy.security_log import SECURITY_LOG_FILE, SecurityLog


@pytest.fixture
def site(tmp_path):
    keys = init_site_keys("hospital_a", tmp_path / "keys").paths
    state = tmp_path / "var" / "lib" / "fedcare"
    state.mkdir(parents=True)
    key = load_private_key(keys.identity_key)
    ledger = SiteLedger(state / "privacy_ledger.jsonl", "hospital_a", key)
    mechanism = Mechanism(1.2, 0.1, 20)
    ledger.append("run-1", 1, "trained", mechanism, 1e-5, 1.0, "rdp", epsilon_opacus([mechanism], 1e-5, "rdp"), 10.0)
    SecurityLog(state / SECURITY_LOG_FILE, "hospital_a", key).append({"kind": "received", "run_id": "run-1"})
    (tmp_path / "data").mkdir()
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(yaml.safe_dump({
        "site": "hospital_a", "data_dir": "data", "state_dir": str(state), "key": str(keys.identity_key),
        "superlink": "127.0.0.1:9092", "insecure": True,
    }))
    return state, site_yaml, keys


def test_the_folder_name_is_never_taken_for_the_site(site, capsys):
    state, _, _ = site
    assert main(["audit", str(state)]) == 2
    out = capsys.readouterr().out
    assert "give --site NAME or --site-config site.yaml" in out and len(out.strip().splitlines()) == 1


def test_site_flag_names_the_site(site):
    state, _, _ = site
    assert main(["audit", str(state), "--site", "hospital_a"]) == 0
    assert [(a.site, a.status) for a in audit_path(state, site="hospital_a")] == [("hospital_a", "ok")]
    # the wrong name is caught: every line is signed for hospital_a
    assert audit_path(state, site="fedcare")[0].status != "ok"


def test_site_config_gives_the_name_and_the_key_that_checks_the_signatures(site, tmp_path, capsys):
    state, site_yaml, _ = site
    assert main(["audit", str(state), "--site-config", str(site_yaml)]) == 0
    assert "hospital_a" in capsys.readouterr().out
    # a line rewritten by someone without the site's key no longer verifies
    log = state / SECURITY_LOG_FILE
    log.write_text(log.read_text().replace('"received"', '"sent"', 1))
    assert main(["audit", str(state), "--site-config", str(site_yaml)]) == 1
    assert main(["audit", str(state), "--site-config", str(site_yaml), "--site", "hospital_b"]) == 2


def test_a_folder_of_site_states_still_names_sites_by_folder(site, tmp_path):
    state, _, _ = site
    root = tmp_path / "states"
    (root / "hospital_a").mkdir(parents=True)
    for path in state.iterdir():
        (root / "hospital_a" / path.name).write_bytes(path.read_bytes())
    assert [(a.site, a.status) for a in audit_path(root)] == [("hospital_a", "ok")]
    assert not (Path(root) / "privacy_ledger.jsonl").exists()
