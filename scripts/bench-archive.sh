#!/usr/bin/env bash
# Publish benchmark in the real dandi-archive (adapter on): 1, 10 and 100 Zarr assets next to
# as many blob assets. Results: benchmarks/results/archive-publish.{json,md,png}.
# Usage: bash scripts/bench-archive.sh [--rounds N] [--sizes N...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/archive-lib.sh"
archive_prepare matplotlib
exec "$work/venv/bin/python" "$root/tests/archive/run.py" on run "$root/benchmarks/archive_publish.py" "$@"
