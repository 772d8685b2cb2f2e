"""The shipped run configs (installed with the package): `--config event_mortality` names one, a path still works."""

from __future__ import annotations

from pathlib import Path

from shared.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent


def shipped_names() -> list[str]:
    """Run configs a name can pick (site.example.yaml is a hospital's site config, not a run)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("site"))


def resolve_config(name_or_path: str | Path) -> Path:
    """An existing file wins; else a shipped config's name (with or without `.yaml`); else one line listing the names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml") if path.parent == Path(".") else None
    if stem in shipped_names():
        return CONFIG_DIR / f"{stem}.yaml"
    raise InputError(name_or_path, None, f"no such config file or shipped config name; shipped: {', '.join(shipped_names())}")
