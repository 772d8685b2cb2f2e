"""The site's ClientApp crosses to Flower's simulation workers as the call that builds it, not by value."""

import pickle

import cloudpickle

from client import app as client_app_module
from client.app import SiteClientApp, build_client_app

RC = {"config": '{"task": "event_mortality"}', "run-dir": "/tmp/run", "run-id": "run-1", "resume": False}


def test_the_app_pickles_as_its_build_call_and_a_worker_builds_it_once(monkeypatch):
    monkeypatch.setattr(client_app_module, "_BUILT", {})
    app = build_client_app(RC)
    assert isinstance(app, SiteClientApp)
    shipped = cloudpickle.dumps(lambda: app)  # what Flower's Ray backend sends with every message
    by_value = len(cloudpickle.dumps(app._mods))  # the mods' closures alone, as they would travel by value
    assert len(shipped) < by_value
    first, second = cloudpickle.loads(shipped)(), pickle.loads(pickle.dumps(app))
    assert isinstance(first, SiteClientApp) and first is second  # one build per run config and process
    assert first._bound_run_config == RC and first is not app
    other = pickle.loads(pickle.dumps(build_client_app({**RC, "run-id": "run-2"})))
    assert other is not first and other._bound_run_config["run-id"] == "run-2"


def test_the_deployment_app_has_no_bound_run_config():
    assert client_app_module.app._bound_run_config is None
    assert pickle.loads(pickle.dumps(client_app_module.app))._bound_run_config is None
