from pathlib import Path

import pytest

from shared.config import config_from_dict, load_config
from shared.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def test_every_shipped_config_loads():
    for path in sorted((REPO / "fedcare" / "configs").glob("*.yaml")):
        if path.name.startswith("site") or path.parent.name != "configs":
            continue
        cfg = load_config(path)
        assert cfg.task in path.stem or cfg.task


def test_defaults_and_model_params_are_kept():
    cfg = config_from_dict({"model": {"name": "event_transformer", "d_model": 32}})
    assert cfg.model.name == "event_transformer" and cfg.model.params == {"d_model": 32}
    assert cfg.to_dict()["model"] == {"name": "event_transformer", "d_model": 32}
    assert cfg.site_target_epsilon("hospital_a") == 8.0


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, field",
    [
        ("task: not_a_task\n", "task"),
        ("privacy: {target_epsilon: -1}\n", "privacy.target_epsilon"),
        ("privacy: {delta: 2}\n", "privacy.delta"),
        ("train: {rounds: three}\n", "train.rounds"),
        ("train: {bogus: 1}\n", "train.bogus"),
        ("strategy: {name: fedmagic}\n", "strategy.name"),
        ("privacy: {site_targets: {nowhere: 1.0}}\n", "privacy.site_targets.nowhere"),
        ("device: tpu\n", "device"),
    ],
)
def test_bad_fields_give_one_line_error_naming_file_and_field(tmp_path, text, field):
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and field in msg


def test_bad_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "task: event_mortality\ntrain: {rounds: [1,\n")
    with pytest.raises(InputError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "YAML" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    cfg = load_config(_write(tmp_path, "privacy: {delta: 1e-5}\n"))
    assert cfg.privacy.delta == pytest.approx(1e-5)
