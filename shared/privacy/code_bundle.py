"""What code a run executes at a site, as a digest the site computes itself.

The Flower app bundle (FAB) a run ships holds `pyproject.toml` and every file of the packages in
BUNDLE_PACKAGES (pyproject's `fab-include`). A hospital never imports code from a bundle: its
`fedcare client` loads the ClientApp from its own installed packages and only lets a run execute
when the bundle's files are byte for byte the installed ones (`bundle_differences`).

    manifest = {<repository path>: <SHA-256 of the file>}   every file, __init__.py included
    digest   = SHA-256 of the manifest's canonical JSON

`installed_manifest()` reads the site's installed packages; `fab_manifest(fab_bytes)` reads a bundle
(a zip, never extracted). `pyproject.toml` and Flower's `.info/` manifest are metadata, not code:
they are left out of both, so one digest names the code whatever its packaging.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

from shared.privacy.ledger import canonical_json

BUNDLE_PACKAGES = ("server", "client", "shared")
REPO_ROOT = Path(__file__).resolve().parents[2]
FAB_METADATA = ("pyproject.toml",)
FAB_METADATA_DIR = ".info/"
MAX_LISTED_DIFFERENCES = 20


class BundleUnreadable(ValueError):
    """The bundle is not a readable zip archive."""


def installed_manifest(root: Path = REPO_ROOT) -> dict[str, str]:
    """{path: SHA-256} of every *.py file of the installed BUNDLE_PACKAGES (the code this site runs)."""
    manifest = {}
    for package in BUNDLE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                manifest[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return manifest


def fab_manifest(fab: bytes) -> dict[str, str]:
    """{path: SHA-256} of every file in a FAB except its metadata (read from the zip in memory)."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            return {info.filename: hashlib.sha256(archive.read(info)).hexdigest() for info in archive.infolist()
                    if not info.is_dir() and info.filename not in FAB_METADATA
                    and not info.filename.startswith(FAB_METADATA_DIR)}
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as err:
        raise BundleUnreadable(f"the app bundle is not a readable zip archive ({err})") from None


def manifest_digest(manifest: dict[str, str]) -> str:
    return hashlib.sha256(canonical_json(manifest).encode()).hexdigest()


def installed_digest(root: Path = REPO_ROOT) -> str:
    """The digest of the site's installed code: what `fedcare client approve` records."""
    return manifest_digest(installed_manifest(root))


def bundle_differences(bundle: dict[str, str], installed: dict[str, str]) -> list[str]:
    """How a bundle differs from the installed code: "changed|added|missing: <path>" (empty when identical)."""
    changed = [f"changed: {p}" for p in sorted(set(bundle) & set(installed)) if bundle[p] != installed[p]]
    added = [f"added: {p}" for p in sorted(set(bundle) - set(installed))]
    missing = [f"missing: {p}" for p in sorted(set(installed) - set(bundle))]
    return changed + added + missing
