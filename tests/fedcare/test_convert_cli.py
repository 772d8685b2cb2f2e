"""`fedcare convert`: MIMIC-IV to site folders the event task accepts; MIMIC-III refused in one line."""

from pathlib import Path

from fedcare.cli import main
from shared.config import config_from_dict
from shared.errors import InputError
from shared.tasks.registry import build_task

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mimic_iv_mini"


def test_convert_mimic_iv_writes_sites_the_event_task_accepts(tmp_path, capsys):
    out = tmp_path / "sites"
    assert main(["convert", "mimic-iv", str(FIXTURE), str(out)]) == 0
    sites = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert sites and f"wrote {len(sites)} event_mortality sites" in capsys.readouterr().out
    task = build_task(config_from_dict({"task": "event_mortality", "data": {"root": str(out), "sites": sites}}))
    loaded = 0
    for site in sites:
        task.check_site(out / site, site)  # what `fedcare simulate` runs on each site before training
        try:
            data = task.prepare_site(out / site, site, tmp_path / "state" / site)
        except InputError as err:  # a unit with a single stay cannot be split: one line naming its folder
            assert str(out / site) in str(err) and "cannot be split" in str(err)
            continue
        assert data.n_train >= 1 and data.n_val >= 1
        loaded += 1
    assert loaded >= 1


def test_convert_refuses_to_overwrite_and_names_mimic_iii(tmp_path, capsys):
    out = tmp_path / "sites"
    (out / "old").mkdir(parents=True)
    assert main(["convert", "mimic-iv", str(FIXTURE), str(out)]) == 2
    assert "not empty" in capsys.readouterr().out and (out / "old").is_dir()

    mimic3 = tmp_path / "mimic3"
    mimic3.mkdir()
    for table in ("ICUSTAYS", "ADMISSIONS", "PATIENTS"):
        (mimic3 / f"{table}.csv").write_text("ROW_ID\n")
    assert main(["convert", "mimic-iii", str(mimic3), str(tmp_path / "o3")]) == 2
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "found ICUSTAYS, ADMISSIONS, PATIENTS" in line and "missing INPUTEVENTS_MV" in line
    assert main(["convert", "mimic-iv", str(mimic3), str(tmp_path / "o4")]) == 2
    assert "MIMIC-III tables" in capsys.readouterr().out
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()
