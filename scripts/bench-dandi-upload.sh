#!/usr/bin/env bash
# dandi-cli's `dandi upload` of Zarr assets into the real dandi-archive (patched, adapter on,
# served on 127.0.0.1 with its PostgreSQL and SeaweedFS): today's presigned PUTs (plain `dandi`)
# against Icechunk (`dandi-icechunk dandi`), a 1 GiB Zarr of 16 k chunks and a 147-shard
# OME-Zarr v3, first upload and a 1% re-upload. Results: benchmarks/results/dandi-upload.{json,md,png}.
# Usage: bash scripts/bench-dandi-upload.sh [--quick] [--rounds N]   (default 3 rounds)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/.archive"
status=0
bash "$root/scripts/setup-archive.sh" || status=$?
if [ "$status" -eq 3 ]; then
    echo "SKIP: no dandi-archive source (set DANDI_ARCHIVE_SRC)"
    exit 0
elif [ "$status" -ne 0 ]; then
    exit "$status"
fi
# the plot (the project's bench extra has it; the benchmark runs without it, with no plot)
"$root/.venv/bin/python" -c "import matplotlib" 2>/dev/null \
    || "$root/.venv/bin/python" -m pip install --quiet "matplotlib>=3.8" 2> >(grep -v "^WARNING: Location" >&2)

export DANDI_ARCHIVE_WORKTREE="$work/src"
served="$(mktemp -d)"
"$work/venv/bin/python" "$root/tests/archive/run.py" on run "$root/tests/archive/serve.py" "$served/archive.json" \
    > "$served/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; rm -rf "$served"' EXIT
for _ in $(seq 120); do [ -f "$served/archive.json" ] && break; sleep 1; done
[ -f "$served/archive.json" ] || { cat "$served/serve.log"; echo "the archive did not start" >&2; exit 1; }
"$root/.venv/bin/python" "$root/benchmarks/dandi_upload.py" --archive "$served/archive.json" "$@" \
    || { status=$?; echo "== the archive's log (last 40 lines)" >&2; tail -40 "$served/serve.log" >&2; exit "$status"; }
