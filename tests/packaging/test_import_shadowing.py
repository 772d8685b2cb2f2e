"""A hospital's working directory may hold folders named like fedcare's packages (`shared/data/`,
`client/`, `server/`): they must not shadow the installed packages, in the CLI or in the Ray workers
that start from that directory."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_folders_named_like_the_packages_in_the_cwd_do_not_shadow_them(tmp_path):
    for folder in ("shared/data", "client", "server", "fedcare"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "shared" / "data" / "omics.parquet").write_bytes(b"")  # data, not code
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user's shell has it
    code = "import shared.data.omics, client.app, server.app, fedcare.cli, shared; print(shared.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()).resolve().is_relative_to(REPO)
