#!/usr/bin/env bash
# The archive integration: prepare the patched dandi-archive (scripts/setup-archive.sh), then
# run, each with its own PostgreSQL and SeaweedFS:
#   - the archive's own tests for zarr, version/publish, asset, embargo, unembargo, tasks and
#     dandiset, with the adapter off and on;
#   - the project's archive tests (tests/archive/), the end-to-end run over HTTP included;
#   - the publish hook's offline schema validation with the archive's dandischema pin (0.12.1;
#     the default suite runs it with the newest dandischema);
#   - the real dandi-cli (the project's .venv) against the archive served on 127.0.0.1
#     (tests/test_dandi_cli_archive.py, released and patched dandi-cli; the default suite skips it).
# Usage: bash scripts/test-archive.sh [PYTEST ARGS for tests/archive...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/archive-lib.sh"
archive_prepare

archive_tests=(dandiapi/zarr dandiapi/api/tests/test_version.py dandiapi/api/tests/test_asset.py
               dandiapi/api/tests/test_embargo.py dandiapi/api/tests/test_unembargo.py
               dandiapi/api/tests/test_tasks.py dandiapi/api/tests/test_dandiset.py)
for mode in off on; do
    echo "== the archive's own tests, patched, adapter $mode"
    run_own=("$work/venv/bin/python" "$root/tests/archive/run.py" "$mode" -q -p no:randomly "${archive_tests[@]}")
    if ! "${run_own[@]}"; then
        # A few of the archive's tests compare lists whose order the database does not promise
        # (test_dandiset_rest_change_owner failed so once in CI, unpatched code path): one rerun.
        echo "== rerunning the failed tests of the archive's own suite once (adapter $mode)"
        "${run_own[@]}" --last-failed --last-failed-no-failures none
    fi
done
echo "== the publish hook with the archive's dandischema pin"
(cd "$root" && "$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_publish.py \
    -k "offline or check_publishable or prepared")
echo "== dandi-icechunk's archive tests"
"$work/venv/bin/python" "$root/tests/archive/run.py" on -q "$root/tests/archive" "$@"
echo "== the real dandi-cli against the archive served on 127.0.0.1"
archive_serve
DANDI_ICECHUNK_TEST_ARCHIVE="$served/archive.json" "$root/.venv/bin/python" -m pytest -q -p no:cacheprovider \
    "$root/tests/test_dandi_cli_archive.py"
