#!/usr/bin/env bash
# Command (1): install, then run a local 3-hospital federation simulation on synthetic data,
# ending with the privacy-budget audit. Extra arguments go to `fedcare simulate`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/fedcare simulate "$@"
