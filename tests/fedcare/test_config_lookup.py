"""`--config` takes a shipped config's name (from any folder) or a path; an unknown name is one line listing the names."""

import pytest

from fedcare.cli import main
from fedcare.configs import CONFIG_DIR, resolve_config, shipped_names
from shared.errors import InputError


def test_a_name_picks_the_packaged_config_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("retain_aki") == CONFIG_DIR / "retain_aki.yaml"
    assert resolve_config("sleep_diagnosis.yaml") == CONFIG_DIR / "sleep_diagnosis.yaml"
    assert {"event_mortality", "retain_aki", "multimodal_survival", "sleep_diagnosis"} <= set(shipped_names())
    assert "site.example" not in shipped_names()  # a hospital's site config, not a run


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "retain_aki").write_text("task: retain_aki\n")  # a local file of the same name
    assert resolve_config("retain_aki").resolve() == (tmp_path / "retain_aki").resolve()
    mine = tmp_path / "my.yaml"
    mine.write_text("task: event_mortality\n")
    assert resolve_config(str(mine)) == mine


@pytest.mark.parametrize("name", ["retain_akii", "configs/event_mortality.yaml", "nowhere/x.yaml"])
def test_an_unknown_name_or_missing_path_is_one_line_listing_the_names(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        resolve_config(name)
    assert name in str(err.value) and "shipped: " in str(err.value) and "retain_aki" in str(err.value)
    assert main(["simulate", "--config", name, "--rounds", "1"]) == 2
    out = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(out) == 1 and out[0].startswith("error:") and "event_mortality, " in out[0]
    assert not (tmp_path / "runs").exists()
