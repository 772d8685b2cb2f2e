"""Where a site's settings come from: the SuperNode's node config (deployment: a site.yaml) or,
in simulation, the run itself (partition id -> site name, data and state folders in the run)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client.site_worker import SiteSettings
from shared.run_config import RunSpec


def site_settings(spec: RunSpec, node_config: Mapping[str, Any]) -> SiteSettings:
    if "site-config" in node_config:  # deployment: the hospital's own YAML
        from client.site_config import load_site_config

        return load_site_config(Path(str(node_config["site-config"])))
    cfg = spec.cfg
    site = cfg.data.sites[int(node_config["partition-id"])]
    state_root = Path(cfg.federation.site_state_root) if cfg.federation.site_state_root else spec.run_dir / "sites"
    policy = cfg.federation.site_policies.get(site)
    return SiteSettings(
        site=site, data_dir=Path(cfg.data.root) / site, state_dir=state_root / site,
        policy=Path(policy) if policy else None,
    )
