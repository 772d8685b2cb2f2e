"""The import structure: every module imports on its own, no import cycle, and the import contracts in
pyproject.toml ([tool.importlinter]) hold, and fail on a copy with a forbidden import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("fedcare", "server", "client", "shared")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _modules() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports_in_a_fresh_interpreter(package: str) -> None:
    """A fresh interpreter per package imports each of its modules in sorted order (the cycle check below
    covers what an import order could hide). `__main__` modules run a program when imported."""
    modules = [m for m in _modules() if m.split(".")[0] == package and not m.endswith("__main__")]
    script = f"import importlib\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(REPO), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_no_module_level_import_cycle() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append((module, imported))
    assert not cycles, f"import cycles through: {cycles[:5]}"


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=_env(root), capture_output=True, text=True,
                          timeout=300)


def _inject(path: Path, line: str) -> None:
    text = path.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    path.write_text(head + sep + line + "\n" + rest if sep else line + "\n" + text)


@pytest.mark.parametrize(
    "module, line, contract",
    [
        ("shared/privacy/ledger.py", "import server.history  # noqa", "shared never imports the applications"),
        ("shared/privacy/accountant.py", "import shared.models.registry  # noqa", "privacy code does not depend on models"),
        ("server/history.py", "import shared.data.events  # noqa", "the center reads no site data"),
        ("shared/config_schema.py", "import shared.tasks.base  # noqa", "the config schema is the bottom of shared"),
        ("shared/models/attention.py", "import shared.tasks.base  # noqa", "no cycles between sibling packages"),
    ],
)
def test_the_contracts_fail_on_a_forbidden_import(tmp_path: Path, module: str, line: str, contract: str) -> None:
    root = _copy(tmp_path)
    clean = _lint(root)
    assert clean.returncode == 0, clean.stdout[-3000:]
    _inject(root / module, line)
    broken = _lint(root)
    assert broken.returncode == 1, broken.stdout[-3000:]
    assert f"{contract} BROKEN" in broken.stdout
