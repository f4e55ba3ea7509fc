#!/usr/bin/env bash
# Set everything up and generate the shipped example into out/example.glb (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec latentforge demo --out out/example.glb "$@"
