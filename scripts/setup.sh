#!/usr/bin/env bash
# Create .venv with Python >= 3.12 and install dandi-icechunk with its test extras.
# Usage: source scripts/setup.sh   (or: bash scripts/setup.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/find-python.sh"
if [ ! -x "$root/.venv/bin/python" ]; then
    "$(find_python)" -m venv "$root/.venv"
fi
"$root/.venv/bin/python" -m pip install --quiet --upgrade pip 2> >(grep -v "^WARNING: Location" >&2)
"$root/.venv/bin/python" -m pip install --quiet -e "$root[test]" 2> >(grep -v "^WARNING: Location" >&2)
