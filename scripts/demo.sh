#!/usr/bin/env bash
# Set up, then train, evaluate and run MD on the demo data shipped in the package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
equipot demo --out equipot-demo "$@"
