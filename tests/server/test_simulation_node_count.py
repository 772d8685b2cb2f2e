"""In a simulation, partition id i is the config's site i: a federation whose number of virtual SuperNodes
differs from the config's sites (e.g. `flwr run .` with Flower's default of 2) stops with one line naming
the setting to change, before any site is asked anything."""

import json

import pytest

from server.federation import run_federation
from shared.errors import InputError
from tests.server.test_resume_and_site_tracking import CFG, SiteGrid

pytestmark = pytest.mark.usefixtures("serverapp_identity")  # tests/conftest.py


@pytest.mark.parametrize("online", [(11, 12), (11, 12, 13, 14)])
def test_a_simulation_with_the_wrong_number_of_supernodes_stops_in_one_line(tmp_path, online):
    raw = json.loads(json.dumps(CFG))
    raw["federation"] = {"mode": "simulation", "wait_for_sites_s": 0.0}
    raw["data"]["root"] = str(tmp_path / "data")
    (tmp_path / "data" / "site_a").mkdir(parents=True)  # data present: nothing is synthesised
    grid = SiteGrid(online=online)
    rc = {"config": json.dumps(raw), "run-id": "r1", "run-dir": str(tmp_path / "run")}
    with pytest.raises(InputError) as err:
        run_federation(grid, rc)
    assert str(err.value) == (f"the simulation federation: num-supernodes: {len(online)} virtual SuperNodes for 3 sites "
                              "(site_a, site_b, site_c): flwr run . --federation-config \"num-supernodes=3\"")
    assert grid.asked == [] and not (tmp_path / "run").exists()  # nothing written
