#!/usr/bin/env bash
# Install, then run the main job on the embedded default bucket: make a small OME-Zarr (v2),
# upload it, change it, upload again, and show the log, the diff, a verify and an export.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
export PATH="$root/.venv/bin:$PATH"
work="$(mktemp -d)"
zarr_id="$(python -c 'import uuid; print(uuid.uuid4())')"
sample="$work/sample.ome.zarr"
python -c "import random; from dandi_icechunk.testing import make_ome_zarr_v2; make_ome_zarr_v2('$sample', seed=random.randrange(10**9))"

echo "== upload $sample as zarr_id $zarr_id"
dandi-icechunk upload "$sample" --zarr-id "$zarr_id" --dandiset 000123 -m "first upload"
echo "== edit one chunk and an attribute, upload again"
python - "$sample" <<'PY'
import sys, zarr
root = zarr.open_group(sys.argv[1], mode="r+")
root["0"][0:8, 0:32, 0:32] = 42
root.attrs["note"] = "edited"
PY
dandi-icechunk upload "$sample" --zarr-id "$zarr_id" -m "fix one chunk"
echo "== upload again with nothing changed"
dandi-icechunk upload "$sample" --zarr-id "$zarr_id"
echo "== log"
dandi-icechunk log "$zarr_id"
first="$(dandi-icechunk log "$zarr_id" --json | python -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][1]["snapshot_id"])')"
echo "== diff $first main"
dandi-icechunk diff "$zarr_id" "$first" main
echo "== verify"
dandi-icechunk verify "$zarr_id"
echo "== export the first snapshot (Zarr v2, as uploaded)"
dandi-icechunk export "$zarr_id" "$work/first.ome.zarr" --snapshot "$first"
echo "== read it with plain Icechunk + zarr (no dandi-icechunk code)"
ICECHUNK_LOG=error python - "$(dandi-icechunk info "$zarr_id" --json | python -c 'import json,sys; print(json.load(sys.stdin)["repository"])')" <<'PY'
import sys, icechunk, zarr
from urllib.parse import urlparse
repo = icechunk.Repository.open(icechunk.local_filesystem_storage(urlparse(sys.argv[1]).path))
group = zarr.open_group(repo.readonly_session(branch="main").store, mode="r")
print("level 0:", group["0"].shape, group["0"].dtype, "mean", float(group["0"][:].mean()))
PY
echo "== upload an identical copy as a new Zarr: the archive already holds it, nothing is uploaded"
cp -r "$sample" "$work/copy.ome.zarr"
dandi-icechunk upload "$work/copy.ome.zarr" --zarr-id "$(python -c 'import uuid; print(uuid.uuid4())')" --dandiset 000456
rm -rf "$work"
