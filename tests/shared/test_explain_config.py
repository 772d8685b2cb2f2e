import pytest

from shared.config import config_from_dict, config_from_json
from shared.errors import InputError


def test_explain_section_defaults_and_round_trip():
    cfg = config_from_dict({}, "run.yaml")
    assert cfg.explain.final_round is False and cfg.explain.patients == 10
    cfg = config_from_dict({"explain": {"final_round": True, "patients": 3}}, "run.yaml")
    again = config_from_json(cfg.to_json())
    assert again.explain.final_round is True and again.explain.patients == 3


@pytest.mark.parametrize(
    "explain, field",
    [
        ({"patients": 0}, "explain.patients"),
        ({"final_round": "yes"}, "explain.final_round"),
        ({"top": 3}, "explain.top"),
    ],
)
def test_bad_explain_fields_name_the_field(explain, field):
    with pytest.raises(InputError) as err:
        config_from_dict({"explain": explain}, "run.yaml")
    assert str(err.value).startswith(f"run.yaml: {field}:")


def test_final_round_needs_a_site_explainer_for_the_task(monkeypatch):
    from shared.explain import registry
    from shared.tasks.sleep import SleepStagingTask

    monkeypatch.delitem(registry._SITE_EXPLAINERS, SleepStagingTask)  # a task whose explainer is not wired
    with pytest.raises(InputError, match="explain.final_round: no site explainer for task 'sleep_staging'"):
        config_from_dict({"task": "sleep_staging", "explain": {"final_round": True}}, "run.yaml")
