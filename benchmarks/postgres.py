"""A throwaway PostgreSQL cluster on loopback (Debian's ``postgresql`` package), for the
contender that models DANDI's versioned-Zarr proposal."""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise SystemExit(
            f"PostgreSQL's {name} was not found: install Debian's postgresql package "
            "(scripts/bench.sh does) and run again"
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def run_postgres() -> Iterator[str]:
    """Start a fresh cluster in a temporary directory, yield its connection string, stop it.

    PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user
    the Debian package creates.
    """
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else getpass.getuser()
    with tempfile.TemporaryDirectory(prefix="dandi-icechunk-pg-") as tmp:
        data = Path(tmp) / "data"
        if as_root:
            shutil.chown(tmp, user)
        port = _free_port()

        def run(*args: str) -> None:
            command = ["runuser", "-u", user, "--", *args] if as_root else list(args)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=tmp)

        run(_bin("initdb"), "-D", str(data), "-U", "bench", "--auth=trust", "-E", "UTF8")
        run(
            _bin("pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(Path(tmp) / "log"),
            "-o",
            f"-h 127.0.0.1 -p {port} -k {tmp} -c fsync=on -c shared_buffers=256MB",
            "start",
        )
        try:
            yield f"host=127.0.0.1 port={port} user=bench dbname=postgres"
        finally:
            run(_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
