"""Bad inputs through the real CLI: one line naming the file and field, exit 2, earlier outputs intact."""

import shutil

import pandas as pd
import pytest

from fedcare.cli import main
from shared.data.events import synthesize_event_sites


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (site_dir,) = synthesize_event_sites(root / "data", n_sites=1, sizes=[60], seed=3)
    return site_dir


def _error_line(capsys) -> str:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return out[0]


def _broken_copy(site, tmp_path, table, edit):
    dst = tmp_path / "broken"
    shutil.copytree(site, dst)
    path = next(dst.glob(f"{table}.csv*"))
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame).to_csv(dst / f"{table}.csv", index=False)
    if path.name.endswith(".gz"):
        path.unlink()
    return dst


@pytest.mark.parametrize(
    "table, edit, field",
    [
        ("stays", lambda f: f.drop(columns=["age"]), "age"),
        ("events", lambda f: f.assign(charttime=["yesterday"] + list(f["charttime"][1:])), "charttime"),
        ("stays", lambda f: f.assign(hospital_expire_flag=[""] + list(f["hospital_expire_flag"][1:])),
         "hospital_expire_flag"),
        ("stays", lambda f: f.iloc[0:0], "stays"),
    ],
)
def test_bad_site_data_for_synth_check_keeps_earlier_outputs(site, tmp_path, capsys, table, edit, field):
    # a finished run's artefact that must survive the failing command
    out_dir = tmp_path / "runs"
    out_dir.mkdir()
    previous = out_dir / "config.yaml"
    previous.write_text("task: event_mortality\n")
    cfg = tmp_path / "cfg.yaml"
    broken = _broken_copy(site, tmp_path, table, edit)
    cfg.write_text(
        f"task: event_mortality\ndata: {{root: {broken.parent}, sites: [broken]}}\n"
        f"train: {{rounds: 1}}\noutput_dir: {out_dir}\n"
    )
    assert main(["simulate", "--config", str(cfg)]) == 2
    line = _error_line(capsys)
    assert line.startswith("error:") and field in line and str(broken) in line
    assert previous.read_text() == "task: event_mortality\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.yaml"]  # no half-made run folder


@pytest.mark.parametrize(
    "text, field", [("task: nope\n", "task"), ("privacy: {target_epsilon: -2}\n", "privacy.target_epsilon")]
)
def test_bad_yaml_fields(tmp_path, capsys, text, field):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    assert main(["simulate", "--config", str(cfg)]) == 2
    line = _error_line(capsys)
    assert str(cfg) in line and field in line


def test_sleep_site_with_a_corrupt_edf_stops_simulate_with_one_line(tmp_path, capsys):
    from shared.data.psg import synthesize_psg_sites

    (site_dir,) = synthesize_psg_sites(tmp_path / "data", n_sites=1, sizes=[3], seed=2, minutes=1.0)
    psg = site_dir / pd.read_csv(site_dir / "recordings.csv")["psg_file"][1]
    psg.write_bytes(psg.read_bytes()[:700])  # truncated inside the header
    cfg = tmp_path / "sleep.yaml"
    cfg.write_text(
        f"task: sleep_staging\ndata: {{root: {site_dir.parent}, sites: [{site_dir.name}]}}\n"
        f"model: {{name: set_transformer_staging, preset: small}}\ntrain: {{rounds: 1, loss: weighted_ce}}\n"
        f"output_dir: {tmp_path / 'runs'}\n"
    )
    assert main(["simulate", "--config", str(cfg)]) == 2
    assert _error_line(capsys).startswith(f"error: {psg}: psg_file: not a readable EDF/EDF+ file (")
    assert not (tmp_path / "runs").exists()
