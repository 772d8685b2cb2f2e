"""Bad inputs through the real CLI: one line naming the file and field, exit 2, earlier outputs intact."""

import shutil

import pandas as pd
import pytest

from fedcare.cli import main
from shared.data.synth.events import synthesize_event_sites


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
    "text, field",
    [
        ("task: nope\n", "task"),
        ("task: event_mortality\nprivacy: {target_epsilon: -2}\n", "privacy.target_epsilon"),
        ("task: event_mortality\ndata: {sites: [hospital_a, ../../x]}\n", "data.sites"),
        ("task: event_mortality\ndata: {sites: [.hidden]}\n", "data.sites"),
    ],
)
def test_bad_yaml_fields(tmp_path, capsys, text, field):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    assert main(["simulate", "--config", str(cfg)]) == 2
    line = _error_line(capsys)
    assert str(cfg) in line and field in line


def test_sleep_site_with_a_corrupt_edf_stops_simulate_with_one_line(tmp_path, capsys):
    from shared.data.synth.psg import synthesize_psg_sites

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


def _no_run_started(tmp_path) -> None:
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "the config is empty"),
        ("task: event_mortality\n".encode("utf-16"), "UTF-16"),
        (b"task: event_mortality\n\xff\xfe\n", "not UTF-8"),
    ],
)
def test_empty_or_non_utf8_config_is_one_line(tmp_path, capsys, content, problem):
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(content)
    assert main(["simulate", "--config", str(cfg), "--output", str(tmp_path / "runs")]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {cfg}") and problem in line
    _no_run_started(tmp_path)


@pytest.mark.parametrize("rounds", ["-1", "0"])
def test_rounds_below_one_fail_before_anything_starts(tmp_path, capsys, rounds):
    assert main(["simulate", "--rounds", rounds, "--output", str(tmp_path / "runs")]) == 2
    assert "--rounds: must be >= 1" in _error_line(capsys)
    _no_run_started(tmp_path)


@pytest.mark.parametrize(
    "sizes, problem", [("a,b,c", "comma-separated whole numbers"), ("10,0,5", "must be > 0"), ("10,20", "expected 3 values")]
)
def test_synth_sizes_are_checked(tmp_path, capsys, sizes, problem):
    assert main(["synth", "--sizes", sizes, "--out", str(tmp_path / "data")]) == 2
    line = _error_line(capsys)
    assert "--sizes" in line and problem in line
    assert not (tmp_path / "data").exists()


def test_every_option_has_help_and_shows_its_default():
    import argparse

    from fedcare.cli import build_parser, subcommand_parsers

    for parser in subcommand_parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{parser.prog} {'/'.join(action.option_strings) or action.dest}: no help text"
    simulate = next(p for p in subcommand_parsers(build_parser()) if p.prog.endswith(" simulate"))
    assert "(default: event_mortality)" in " ".join(simulate.format_help().split())
