"""A hospital's site.yaml (deployment): validated once, one clear error per bad field.

    site: hospital_a
    data_dir: /data/fedcare              # the site's own data folder (mounted read-only)
    state_dir: /var/lib/fedcare          # ledger, noise plans, encoders, embedding cache
    budget: {lifetime_epsilon: 10.0, delta: 1.0e-5}
    key: /etc/fedcare/hospital_a_identity.key      # Ed25519 identity key: ledger + security log (PEM)
    auth_key: /etc/fedcare/hospital_a_auth.key     # SuperNode authentication key (EC, OpenSSH)
    superlink: fl.center.example.org:9092
    root_certificates: /etc/fedcare/ca.crt         # the deployment CA
    device: auto                          # optional: auto | cpu | cuda | cuda:N
    precision: fp32                       # optional: fp32 | tf32 | bf16
    insecure: false                       # optional, development only: no TLS, no node authentication
    policy: /etc/fedcare/site_policy.yaml # the site policy (`fedcare client approve`); without one nothing trains
    roster: /etc/fedcare/roster.yaml      # optional: the federation roster an approval pins

Relative paths are read relative to the folder of the site.yaml.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from client.site_worker import SiteSettings
from shared.config_schema import PRECISIONS
from shared.errors import InputError
from shared.io import load_yaml
from shared.privacy.keys import load_private_key
from shared.privacy.roster import load_roster
from shared.privacy.site_policy import load_site_policy

KEYS = ("site", "data_dir", "state_dir", "budget", "key", "auth_key", "superlink", "root_certificates", "device",
        "precision", "insecure", "policy", "roster")
REQUIRED = ("site", "data_dir", "state_dir", "key", "superlink")
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


@dataclass
class SiteDeployment:
    """Everything `fedcare client` needs: the worker's settings plus how to reach the center."""

    settings: SiteSettings
    superlink: str
    root_certificates: Path | None
    auth_key: Path | None
    insecure: bool
    delta: float | None


def load_site_config(path: Path) -> SiteSettings:
    """The SiteSettings of a site.yaml (what the ClientApp needs each round)."""
    return load_site_deployment(path).settings


def load_site_deployment(path: Path) -> SiteDeployment:
    path = Path(path)
    raw = _read_yaml(path)
    src = str(path)
    base = path.resolve().parent

    def need(ok: bool, field: str, problem: str) -> None:
        if not ok:
            raise InputError(src, field, problem)

    unknown = sorted(set(raw) - set(KEYS))
    need(not unknown, ", ".join(map(str, unknown)), f"unknown key; allowed: {', '.join(KEYS)}")
    for key in REQUIRED:
        need(raw.get(key) not in (None, ""), key, "missing")

    site = raw["site"]
    need(isinstance(site, str) and bool(SITE_NAME.match(site)), "site", f"{site!r} is not a valid site name")

    data_dir = _path(raw, "data_dir", base, src)
    need(data_dir.is_dir(), "data_dir", f"{data_dir} is not a folder")
    need(os.access(data_dir, os.R_OK | os.X_OK), "data_dir", f"{data_dir} is not readable")
    state_dir = _path(raw, "state_dir", base, src)
    need(not state_dir.exists() or state_dir.is_dir(), "state_dir", f"{state_dir} exists and is not a folder")
    writable_parent = next((p for p in [state_dir, *state_dir.parents] if p.exists()), None)
    need(writable_parent is not None and os.access(writable_parent, os.W_OK), "state_dir", f"{state_dir} is not writable")

    lifetime_epsilon, delta = _budget(raw.get("budget"), src)

    key = _path(raw, "key", base, src)
    try:
        load_private_key(key)
    except InputError as err:
        raise InputError(src, "key", f"{key}: {err.problem}") from None

    insecure = raw.get("insecure", False)
    need(isinstance(insecure, bool), "insecure", f"expected true or false, got {insecure!r}")
    auth_key = _path(raw, "auth_key", base, src) if raw.get("auth_key") else None
    root = _path(raw, "root_certificates", base, src) if raw.get("root_certificates") else None
    if insecure:
        need(auth_key is None, "auth_key", "node authentication needs TLS; remove auth_key or set insecure: false")
    else:
        need(root is not None, "root_certificates", "missing (the deployment CA certificate; or insecure: true for development)")
        need(auth_key is not None, "auth_key", "missing (the SuperNode authentication key from `fedcare client init`)")
        _check_certificate(root, src)
        _check_auth_key(auth_key, src)

    superlink = raw["superlink"]
    match = ADDRESS.match(str(superlink)) if isinstance(superlink, str) else None
    need(match is not None and 0 < int(match.group(2)) < 65536, "superlink", f"expected host:port, got {superlink!r}")

    device = raw.get("device")
    need(device is None or (isinstance(device, str) and (device in ("auto", "cpu") or device.startswith("cuda"))),
         "device", f"expected auto, cpu, cuda or cuda:N, got {device!r}")
    precision = raw.get("precision")
    need(precision is None or precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}, got {precision!r}")

    policy = _path(raw, "policy", base, src) if raw.get("policy") else None
    if policy is not None:
        try:
            load_site_policy(policy)
        except InputError as err:
            raise InputError(src, "policy", f"{policy}: {_where(err)}{err.problem}") from None
    roster = _path(raw, "roster", base, src) if raw.get("roster") else None
    if roster is not None:
        try:
            load_roster(roster)
        except InputError as err:
            raise InputError(src, "roster", f"{roster}: {_where(err)}{err.problem}") from None

    settings = SiteSettings(
        site=site, data_dir=data_dir, state_dir=state_dir, lifetime_epsilon=lifetime_epsilon, signing_key=key,
        device=device, precision=precision, source=src, delta=delta, policy=policy, roster=roster, deployment=True,
    )
    return SiteDeployment(settings, superlink, root, auth_key, insecure, delta)


def _where(err: InputError) -> str:
    return f"{err.field}: " if err.field else ""


def _read_yaml(path: Path) -> dict[str, Any]:
    raw = load_yaml(path, "site config")
    if not isinstance(raw, dict):
        raise InputError(path, None, f"expected a mapping of settings, got {type(raw).__name__}")
    return raw


def _path(raw: dict[str, Any], key: str, base: Path, src: str) -> Path:
    value = raw[key]
    if not isinstance(value, str):
        raise InputError(src, key, f"expected a path, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _budget(raw: Any, src: str) -> tuple[float | None, float | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        raise InputError(src, "budget", f"expected a mapping {{lifetime_epsilon, delta}}, got {raw!r}")
    unknown = sorted(set(raw) - {"lifetime_epsilon", "delta"})
    if unknown:
        raise InputError(src, f"budget.{unknown[0]}", "unknown key; allowed: lifetime_epsilon, delta")
    values = {}
    for key in ("lifetime_epsilon", "delta"):
        value = raw.get(key)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(src, f"budget.{key}", f"expected a number, got {value!r}")
        values[key] = None if value is None else float(value)
    if values["lifetime_epsilon"] is not None and not values["lifetime_epsilon"] > 0:
        raise InputError(src, "budget.lifetime_epsilon", f"must be > 0, got {values['lifetime_epsilon']}")
    if values["delta"] is not None and not 0 < values["delta"] < 1:
        raise InputError(src, "budget.delta", f"must be in (0, 1), got {values['delta']}")
    return values["lifetime_epsilon"], values["delta"]


def _check_certificate(path: Path, src: str) -> None:
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise InputError(src, "root_certificates", f"{path}: file not found") from None
    except (OSError, ValueError) as err:
        raise InputError(src, "root_certificates", f"{path}: not a PEM certificate ({err})") from None


def _check_auth_key(path: Path, src: str) -> None:
    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise InputError(src, "auth_key", f"{path}: file not found") from None
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise InputError(src, "auth_key", f"{path}: not an unencrypted OpenSSH private key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, NIST_CURVES):
        got = type(key).__name__ if not isinstance(key, ec.EllipticCurvePrivateKey) else f"EC {key.curve.name}"
        raise InputError(src, "auth_key", f"{path}: expected an EC key on a NIST curve (P-256/384/521), got {got}")
