# Sourced by the scripts that use the patched dandi-archive; expects $root (the project root).
work="$root/.archive"
export DANDI_ARCHIVE_WORKTREE="$work/src"

# Prepare the archive (scripts/setup-archive.sh, extra packages as arguments); without a
# dandi-archive source (setup-archive.sh says so and exits 3) end the calling script successfully.
archive_prepare() {
    local status=0
    bash "$root/scripts/setup-archive.sh" "$@" || status=$?
    if [ "$status" -eq 3 ]; then
        exit 0
    elif [ "$status" -ne 0 ]; then
        exit "$status"
    fi
}

# Serve the archive on 127.0.0.1 (tests/archive/serve.py) until the calling script ends;
# sets $served: the directory holding archive.json (URL and API keys) and serve.log.
archive_serve() {
    served="$(mktemp -d)"
    "$work/venv/bin/python" "$root/tests/archive/run.py" on run "$root/tests/archive/serve.py" \
        "$served/archive.json" > "$served/serve.log" 2>&1 &
    server=$!
    trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; rm -rf "$served"' EXIT
    for _ in $(seq 120); do [ -f "$served/archive.json" ] && break; sleep 1; done
    [ -f "$served/archive.json" ] || { cat "$served/serve.log"; echo "the archive did not start" >&2; exit 1; }
}
