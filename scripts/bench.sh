#!/usr/bin/env bash
# Install (with the benchmark extras and Debian's postgresql if missing), then run the
# comparison of issue 6: benchmarks/compare.py (DANDI today, DANDI's proposal, Icechunk
# directly, dandi-icechunk). Results: benchmarks/results/compare.{json,md} and PNG plots.
# Usage: bash scripts/bench.sh [--quick]      (--quick: a few minutes; full: 25-45 minutes)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
"$root/.venv/bin/python" -m pip install --quiet -e "$root[test,bench]" 2> >(grep -v "^WARNING: Location" >&2)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
exec "$root/.venv/bin/python" "$root/benchmarks/compare.py" "$@"
