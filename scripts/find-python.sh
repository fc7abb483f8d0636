#!/usr/bin/env bash
# find_python: the path of a Python >= 3.12 on this machine (pyenv included). Source this file.
find_python() {
    for candidate in python3.13 python3.12 /root/.pyenv/versions/3.12.*/bin/python3.12 \
                     "$HOME"/.pyenv/versions/3.1[2-9].*/bin/python3 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        for v in $(pyenv versions --bare | grep -E '^3\.1[2-9]' | sort -rV); do
            PYENV_VERSION="$v" pyenv which python3 && return 0
        done
    fi
    echo "dandi-icechunk needs Python >= 3.12 (Icechunk 2.x); none found" >&2
    return 1
}
