"""Where a site's settings come from: the SuperNode's node config (deployment: a site.yaml) or,
in simulation, the run itself (partition id -> site name, data and state folders in the run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context

from client.site_worker import SiteSettings
from shared.config import config_from_json


def site_settings_from_context(context: Context, rc: dict[str, Any]) -> SiteSettings:
    node = dict(context.node_config)
    if "site-config" in node:  # deployment: the hospital's own YAML
        from client.site_config import load_site_config

        return load_site_config(Path(str(node["site-config"])))
    cfg = config_from_json(str(rc["fedcare-config"]))
    site = cfg.data.sites[int(node["partition-id"])]
    run_dir = Path(str(rc["run-dir"]))
    state_root = Path(cfg.federation.site_state_root) if cfg.federation.site_state_root else run_dir / "sites"
    policy = cfg.federation.site_policies.get(site)
    return SiteSettings(
        site=site, data_dir=Path(cfg.data.root) / site, state_dir=state_root / site,
        policy=Path(policy) if policy else None,
    )
