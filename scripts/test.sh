#!/usr/bin/env bash
# The test suite: real SeaweedFS (started by the fixtures), real Icechunk, real local bucket.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$root/.venv/bin/python" ] || bash "$root/scripts/setup.sh"
export PATH="$root/.venv/bin:$PATH"
cd "$root"
exec python -m pytest -q "$@"
