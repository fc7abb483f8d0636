#!/usr/bin/env bash
# dandi-cli's `dandi upload` of Zarr assets into the real dandi-archive (patched, adapter on,
# served on 127.0.0.1 with its PostgreSQL and SeaweedFS): today's presigned PUTs (plain `dandi`)
# against Icechunk (`dandi-icechunk dandi`), a 1 GiB Zarr of 16 k chunks and a 147-shard
# OME-Zarr v3, first upload and a 1% re-upload. Results: benchmarks/results/dandi-upload.{json,md,png}.
# Usage: bash scripts/bench-dandi-upload.sh [--quick] [--rounds N]   (default 3 rounds)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/archive-lib.sh"
archive_prepare
# the plot (the project's bench extra has it; the benchmark runs without it, with no plot)
"$root/.venv/bin/python" -c "import matplotlib" 2>/dev/null \
    || "$root/.venv/bin/python" -m pip install --quiet "matplotlib>=3.8" 2> >(grep -v "^WARNING: Location" >&2)

archive_serve
"$root/.venv/bin/python" "$root/benchmarks/dandi_upload.py" --archive "$served/archive.json" "$@" \
    || { status=$?; echo "== the archive's log (last 40 lines)" >&2; tail -40 "$served/serve.log" >&2; exit "$status"; }
