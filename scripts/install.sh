#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs fedcare with its pinned dependencies.
# torch is pinned to 2.13.0 here only (CPU wheel available locally); the package itself needs torch>=2.4.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.13.0"
# editable_mode=compat puts the checkout itself on sys.path (a .pth line), so a folder such as ./shared/data/
# in the working directory cannot shadow the packages (the default import hook runs after the cwd entry)
.venv/bin/python -m pip install -q -e ".[test]" --config-settings editable_mode=compat
