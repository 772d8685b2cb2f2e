"""`pip install <checkout>` into a fresh virtual environment, then use fedcare from a directory outside the
checkout that holds `shared/data/`: the shipped configs are found by name, and nothing is imported from the
checkout.

The new environment gets the test interpreter's site-packages as a plain path (a `.pth` line: the
dependencies, without processing that directory's own `.pth` files, so an editable install of the checkout
there stays inactive); fedcare itself is a real, non-editable install."""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_FILES = ("pyproject.toml", "README.md", "fedcare", "server", "client", "shared")  # what the build reads

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # a user's shell
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("install")
    source = base / "checkout"
    source.mkdir()  # a copy: pip builds in place, and a stale build/ must not leak into the install
    for name in PACKAGE_FILES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base)
                   .stdout.strip())
    (purelib / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                 "--no-build-isolation", str(source)], base)
    assert done.returncode == 0, done.stderr[-2000:]
    shutil.rmtree(source)  # the installed package must not need its source tree
    return venv


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "shared" / "data").mkdir(parents=True)  # the benchmark's advice for placing data
    (tmp_path / "shared" / "data" / "omics.parquet").write_bytes(b"")
    return tmp_path


def test_installed_package_ships_its_configs_and_imports_nothing_from_the_checkout(installed, workdir):
    code = textwrap.dedent("""
        import sys
        import fedcare, shared, client, server, shared.data.omics
        from fedcare.configs import resolve_config, shipped_names
        from shared.config import load_config
        from shared.metrics import c_index
        from shared.tasks.registry import build_task
        import numpy as np
        for module in (fedcare, shared, client, server, shared.data.omics):
            print("module", module.__file__)
        for name in ("retain_aki", "multimodal_survival", "sleep_diagnosis", "event_mortality"):
            path = resolve_config(name)
            cfg = load_config(path)
            build_task(cfg).build_model()
            print("config", name, path, cfg.task)
        print("c_index", c_index(np.array([1.0, 2, 3]), np.array([1, 1, 0]), np.array([3.0, 2, 1])))
        print("names", ",".join(shipped_names()))
    """)
    done = _run([str(installed / "bin" / "python"), "-c", code], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for line in lines:
        if line.startswith(("module", "config")):
            location = Path(line.split()[-1] if line.startswith("module") else line.split()[2]).resolve()
            assert location.is_relative_to(installed.resolve()), line  # not the checkout, not ./shared
    assert "c_index 1.0" in lines
    names = next(line for line in lines if line.startswith("names ")).split()[1].split(",")
    assert {"retain_aki", "multimodal_survival", "sleep_diagnosis", "event_mortality"} <= set(names)
    assert "site.example" not in names  # a hospital's site config is not a run


def test_installed_fedcare_simulates_a_shipped_config_by_name_from_a_folder_with_shared_data(installed, workdir):
    # Tiny synthetic sites where the shipped config looks for its data (data.root), so one round takes seconds
    # of training; the config itself is the packaged one, picked by name.
    tiny = textwrap.dedent("""
        from pathlib import Path
        from fedcare.configs import resolve_config
        from shared.config import load_config
        from shared.tasks.registry import build_task
        cfg = load_config(resolve_config("retain_aki"))
        cfg.data.synth_sizes = [80] * len(cfg.data.sites)
        build_task(cfg).synthesize(Path(cfg.data.root), list(cfg.data.sites), 0)
    """)
    done = _run([str(installed / "bin" / "python"), "-c", tiny], workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    fedcare = str(installed / "bin" / "fedcare")
    done = _run([fedcare, "simulate", "--config", "retain_aki", "--rounds", "1", "--output", "runs"], workdir)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "final global model" in done.stdout and "ModuleNotFoundError" not in done.stderr
    (run_dir,) = (workdir / "runs").iterdir()
    assert (run_dir / "summary.json").is_file() and "task: retain_aki" in (run_dir / "config.yaml").read_text()

    bad = _run([fedcare, "simulate", "--config", "retain_akii", "--rounds", "1"], workdir)
    assert bad.returncode == 2
    error = [line for line in bad.stdout.splitlines() if line.strip()]
    assert len(error) == 1 and "retain_akii" in error[0] and "retain_aki," in error[0], bad.stdout
