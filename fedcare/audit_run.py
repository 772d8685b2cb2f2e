"""Finds a run's (or a site state folder's) ledgers and audits them with the independent accountant;
each site's security log (security_log.jsonl), where present, is verified too (chain, sequence, signatures);
in a run folder each ledger is cross-checked against the run's config and what the center kept
(metrics.json: what each site reported per round, and the ledger head hash it sent);
runs the empirical membership-inference audit of a checkpoint at a site."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.errors import InputError
from shared.io import load_json, load_yaml
from shared.privacy.audit import LedgerAudit, RunRecord, audit_ledgers, security_log_problems
from shared.privacy.keys import load_public_key
from shared.privacy.ledger import LEDGER_FILE, SiteLedger
from shared.privacy.security_log import SECURITY_LOG_FILE

if TYPE_CHECKING:
    import numpy as np

    from shared.privacy.mia import MembershipAudit


def find_ledgers(path: Path, site: str | None = None) -> tuple[dict[str, Path], dict[str, Path], dict[str, float]]:
    """ledgers, public keys and targets by site, for a run folder, a folder of site states (one folder per
    site, named after it), or one site's state folder, whose site name must be given (`site`): its folder
    is named anything (/var/lib/fedcare in the containers)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "no such run folder")
    if (path / LEDGER_FILE).is_file() or (path / SECURITY_LOG_FILE).is_file():
        if site is None:
            raise InputError(path, "--site", "a site's state folder: give --site NAME or --site-config site.yaml "
                                             "(the folder's name is not the site's)")
        ledgers = {site: path / LEDGER_FILE}
        pub = path / "keys" / f"{site}.pub"
        return ledgers, ({site: pub} if pub.is_file() else {}), {}
    targets: dict[str, float] = {}
    sites_root = path / "sites" if (path / "sites").is_dir() else path
    cfg_file = path / "config.yaml"
    if cfg_file.is_file():
        cfg = load_yaml(cfg_file) or {}
        privacy = cfg.get("privacy", {})
        for site in cfg.get("data", {}).get("sites", []):
            targets[site] = float(privacy.get("site_targets", {}).get(site, privacy.get("target_epsilon")))
        state_root = cfg.get("federation", {}).get("site_state_root")
        if state_root and not (path / "sites").is_dir():
            sites_root = Path(state_root)
    ledgers = {p.parent.name: p for p in sorted(sites_root.glob(f"*/{LEDGER_FILE}"))}
    for name, log in find_security_logs(sites_root).items():
        ledgers.setdefault(name, log.parent / LEDGER_FILE)  # a site that never trained still has its log audited
    if not ledgers:
        raise InputError(path, LEDGER_FILE, "no privacy ledger found (expected sites/<site>/privacy_ledger.jsonl)")
    keys = {}
    for name, ledger in ledgers.items():
        pub = ledger.parent / "keys" / f"{name}.pub"
        if pub.is_file():
            keys[name] = pub
    return ledgers, keys, targets


def find_security_logs(sites_root: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in sorted(Path(sites_root).glob(f"*/{SECURITY_LOG_FILE}"))}


def run_records(path: Path) -> dict[str, RunRecord]:
    """site -> what the center kept of this run for it ({} unless `path` is a run folder with config.yaml
    and metrics.json)."""
    path = Path(path)
    cfg_file, metrics_file = path / "config.yaml", path / "metrics.json"
    if not (cfg_file.is_file() and metrics_file.is_file()):
        return {}
    cfg = load_yaml(cfg_file) or {}
    metrics = load_json(metrics_file)
    summary = load_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    run_id = str(summary.get("run_id") or path.name)
    records: dict[str, RunRecord] = {}
    for round_text, sites in (metrics.get("rounds") or {}).items():
        for site, rec in (sites or {}).items():
            record = records.setdefault(site, RunRecord(run_id, cfg))
            record.rounds[int(round_text)] = rec
    for site in cfg.get("data", {}).get("sites", []):
        records.setdefault(site, RunRecord(run_id, cfg))
    return records


def audit_path(path: Path, public_keys: dict[str, Path | Ed25519PublicKey] | None = None,
               site: str | None = None) -> list[LedgerAudit]:
    """`site`: the site's name when `path` is one site's state folder (from its site.yaml or --site)."""
    ledgers, found_keys, targets = find_ledgers(path, site)
    keys: dict[str, Path | Ed25519PublicKey] = {**found_keys, **(public_keys or {})}
    audits = audit_ledgers(ledgers, keys or None, targets, run_records(path))  # no key: chain and accounting only
    for audit in audits:
        log = ledgers[audit.site].parent / SECURITY_LOG_FILE
        if not log.is_file():
            continue
        if not ledgers[audit.site].is_file():  # the site never trained (e.g. refused): only its log speaks
            audit.status, audit.problems = "ok", []
        given = keys.get(audit.site)
        public_key = given if given is None or isinstance(given, Ed25519PublicKey) else load_public_key(given)
        problems = security_log_problems(log, public_key, audit.site)
        if problems:
            audit.problems += problems
            audit.status = "tampered"
    return audits


def membership_audit_at_site(checkpoint: Path, data_dir: Path, state_dir: Path) -> MembershipAudit:
    """Loss-threshold membership inference against a global checkpoint, at one site: its training split
    are the members, its validation split the non-members; epsilon from the site's ledger for that run."""
    from server.checkpoints import load_checkpoint
    from shared.config import config_from_dict
    from shared.privacy.mia import membership_audit, per_example_losses
    from shared.tasks.registry import build_task

    ckpt = load_checkpoint(Path(checkpoint))
    cfg = config_from_dict(ckpt["config"], f"{checkpoint} (config)")
    task = build_task(cfg)
    model = task.build_model()
    model.load_state_dict(ckpt["state_dict"])
    data_dir, state_dir = Path(data_dir), Path(state_dir)
    if not data_dir.is_dir():
        raise InputError(data_dir, None, "no such site data folder")
    site_data = task.prepare_site(data_dir, data_dir.name, state_dir)  # the same split as in training (config seed)

    def losses(dataset: object) -> np.ndarray:
        return per_example_losses(model, dataset, task.kind, task.forward, task.targets, task.loss)

    epsilon, delta = _ledger_epsilon(state_dir / LEDGER_FILE, data_dir.name, str(ckpt.get("run_id", "")), int(ckpt["round"]))
    return membership_audit(losses(site_data.train), losses(site_data.val), epsilon, delta)


def _ledger_epsilon(path: Path, site: str, run_id: str, last_round: int) -> tuple[float | None, float | None]:
    """The site's cumulative epsilon after its last trained round of `run_id` up to `last_round` (else its
    latest trained entry); (None, None) without a ledger."""
    if not path.is_file():
        return None, None
    trained = [e for e in SiteLedger(path, site).entries() if e.get("status") == "trained"]
    in_run = [e for e in trained if e.get("run_id") == run_id and int(e.get("round", 0)) <= last_round]
    chosen = (in_run or trained or [None])[-1]
    if chosen is None:
        return 0.0, None
    return float(chosen["cumulative_epsilon"]), float(chosen["delta"])
