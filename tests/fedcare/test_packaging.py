"""Packaging: every third-party module the runtime packages import is a runtime dependency (in
pyproject and in the container requirements), and `fedcare --version` reports the installed version."""

import ast
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from fedcare.cli import main, package_version

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("fedcare", "server", "client", "shared")


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-").replace(".", "-")


def _closure(names: set[str]) -> set[str]:
    """The names plus everything they require (without extras), from the installed metadata."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def _imported_distributions() -> dict[str, str]:
    """distribution -> a file importing it, for every third-party import in the runtime packages
    (lazy imports inside functions included)."""
    modules: dict[str, str] = {}
    for package in RUNTIME_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    modules.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    owners = md.packages_distributions()
    found = {}
    for module, where in modules.items():
        if module in sys.stdlib_module_names or module in RUNTIME_PACKAGES:
            continue
        for dist in owners.get(module, [module]):
            found[_name(dist)] = where
    return found


def test_runtime_imports_are_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _closure({_name(d) for d in project["dependencies"]})
    missing = {dist: where for dist, where in _imported_distributions().items() if dist not in runtime}
    assert not missing, f"imported at run time but not a runtime dependency: {missing}"
    assert "lifelines" in {_name(d) for d in project["dependencies"]}  # shared/metrics.py c_index
    assert not any(_name(d) == "lifelines" for d in project["optional-dependencies"]["test"])


def test_container_requirements_cover_runtime_imports():
    pins = {_name(line) for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines()
            if line.split("#")[0].strip()}
    installed = _closure(pins | {"torch"})  # torch comes from the TORCH_INDEX wheel index
    missing = {dist: where for dist, where in _imported_distributions().items() if dist not in installed}
    assert not missing, f"imported at run time but not installed in the images: {missing}"


def test_version_flag(capsys):
    try:
        main(["--version"])
    except SystemExit as done:
        assert done.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"fedcare {package_version()}"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert package_version() == declared


def test_version_flag_from_the_console_script():
    done = subprocess.run([sys.executable, "-m", "fedcare.cli", "--version"], capture_output=True, text=True,
                          cwd=ROOT, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"fedcare \d+\.\d+\.\d+\S*", done.stdout.strip())
