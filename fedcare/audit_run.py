"""Finds a run's (or a site state folder's) ledgers and audits them with the independent accountant;
each site's security log (security_log.jsonl), where present, is verified too (chain, sequence, signatures)."""

from __future__ import annotations

from pathlib import Path

import yaml

from shared.errors import InputError
from shared.privacy.audit import LedgerAudit, audit_ledgers, security_log_problems
from shared.privacy.keys import load_public_key
from shared.privacy.security_log import SECURITY_LOG_FILE

LEDGER_FILE = "privacy_ledger.jsonl"


def find_ledgers(path: Path) -> tuple[dict[str, Path], dict[str, Path], dict[str, float]]:
    """ledgers, public keys and targets by site, for a run folder or a folder of site states."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "no such run folder")
    targets: dict[str, float] = {}
    sites_root = path / "sites" if (path / "sites").is_dir() else path
    cfg_file = path / "config.yaml"
    if cfg_file.is_file():
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
        privacy = cfg.get("privacy", {})
        for site in cfg.get("data", {}).get("sites", []):
            targets[site] = float(privacy.get("site_targets", {}).get(site, privacy.get("target_epsilon")))
        state_root = cfg.get("federation", {}).get("site_state_root")
        if state_root and not (path / "sites").is_dir():
            sites_root = Path(state_root)
    ledgers = {p.parent.name: p for p in sorted(sites_root.glob(f"*/{LEDGER_FILE}"))}
    if (path / LEDGER_FILE).is_file():
        ledgers[path.name] = path / LEDGER_FILE
    for site, log in find_security_logs(path, sites_root).items():
        ledgers.setdefault(site, log.parent / LEDGER_FILE)  # a site that never trained still has its log audited
    if not ledgers:
        raise InputError(path, LEDGER_FILE, "no privacy ledger found (expected sites/<site>/privacy_ledger.jsonl)")
    keys = {}
    for site, ledger in ledgers.items():
        pub = ledger.parent / "keys" / f"{site}.pub"
        if pub.is_file():
            keys[site] = pub
    return ledgers, keys, targets


def find_security_logs(path: Path, sites_root: Path) -> dict[str, Path]:
    logs = {p.parent.name: p for p in sorted(Path(sites_root).glob(f"*/{SECURITY_LOG_FILE}"))}
    if (Path(path) / SECURITY_LOG_FILE).is_file():
        logs[Path(path).name] = Path(path) / SECURITY_LOG_FILE
    return logs


def audit_path(path: Path, public_keys: dict[str, Path] | None = None) -> list[LedgerAudit]:
    ledgers, keys, targets = find_ledgers(path)
    keys.update(public_keys or {})
    audits = audit_ledgers(ledgers, keys, targets)
    for audit in audits:
        log = ledgers[audit.site].parent / SECURITY_LOG_FILE
        if not log.is_file():
            continue
        if not ledgers[audit.site].is_file():  # the site never trained (e.g. refused): only its log speaks
            audit.status, audit.problems = "ok", []
        public_key = load_public_key(keys[audit.site]) if audit.site in keys else None
        problems = security_log_problems(log, public_key, audit.site)
        if problems:
            audit.problems += problems
            audit.status = "tampered"
    return audits
