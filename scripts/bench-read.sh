#!/usr/bin/env bash
# The read benchmark (benchmarks/read.py) as a scientist installs the reader: a venv of its own
# (.venv-read) with the light install and the newest zarr, xarray and icechunk, not the full
# install's (dandi-cli holds zarr at 3.1.5 there). Results: benchmarks/results/read.{json,md,png}.
# Usage: bash scripts/bench-read.sh [--quick] [read.py's options]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/find-python.sh"
venv="$root/.venv-read"
[ -x "$venv/bin/python" ] || "$(find_python)" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip 2> >(grep -v "^WARNING: Location" >&2)
"$venv/bin/python" -m pip install --quiet --upgrade -e "$root[serve,bench]" 2> >(grep -v "^WARNING: Location" >&2)
if "$venv/bin/python" -c "import dandi" 2>/dev/null; then echo "the light install pulled dandi-cli" >&2; exit 1; fi
exec "$venv/bin/python" "$root/benchmarks/read.py" "$@"
