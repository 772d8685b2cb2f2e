#!/usr/bin/env bash
# Command (2): install, then run the test suite (and lint). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # import contracts: [tool.importlinter] in pyproject.toml
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
