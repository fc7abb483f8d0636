"""Run pytest inside the patched dandi-archive with its services: a throwaway PostgreSQL and
SeaweedFS on 127.0.0.1, the archive's own test environment variables, and the adapter on or off.

    .archive/venv/bin/python tests/archive/run.py on|off [PYTEST ARGS...]
    .archive/venv/bin/python tests/archive/run.py on|off run SCRIPT.py ARGS...
        (``manage.py makemigrations``, a benchmark: any script, with the settings module set)

``scripts/test-archive.sh`` prepares ``.archive/`` and calls this; it is not meant to be run
from the project's own virtualenv (Django and the archive are not installed there).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from dandi_icechunk.testing import run_postgres, run_seaweedfs

HERE = Path(__file__).resolve().parent
SETTINGS = {"off": "dandiapi.settings.testing", "on": "icechunk_settings"}


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that the services are stopped on the way out


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _stop)
    if not argv or argv[0] not in SETTINGS:
        print("usage: run.py on|off [PYTEST ARGS... | run SCRIPT.py ARGS...]", file=sys.stderr)
        return 2
    mode, pytest_args = argv[0], argv[1:]
    archive = Path(os.environ.get("DANDI_ARCHIVE_WORKTREE", HERE.parents[1] / ".archive" / "src"))
    work = Path(tempfile.mkdtemp(prefix="dandi-archive-services-"))
    with run_postgres() as postgres, run_seaweedfs(
        work / "seaweedfs", bucket="django-storage-testing", iam_writable=True
    ) as s3:
        host = s3.endpoint_url.removeprefix("http://")
        env = {
            **os.environ,
            "DJANGO_DATABASE_URL": postgres.url,
            "DJANGO_CELERY_BROKER_URL": "memory://",
            "DJANGO_MINIO_STORAGE_URL": f"http://{s3.access_key_id}:{s3.secret_access_key}@{host}/{s3.bucket}",
            "DJANGO_DANDI_WEB_APP_URL": os.environ.get("DJANGO_DANDI_WEB_APP_URL", "http://localhost:8085"),
            "DJANGO_DANDI_API_URL": os.environ.get("DJANGO_DANDI_API_URL", "http://localhost:8000"),
            "DJANGO_DANDI_JUPYTERHUB_URL": "https://hub.dandiarchive.org/",
            "DJANGO_DANDI_INSTANCE_NAME": "DEV-DANDI",
            "DJANGO_DANDI_INSTANCE_IDENTIFIER": "RRID:ABC_123456",
            "DJANGO_DANDI_DOI_API_PREFIX": "10.80507",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        }
        if pytest_args[:1] == ["run"]:
            env["DJANGO_SETTINGS_MODULE"] = SETTINGS[mode]
            command = [sys.executable, *pytest_args[1:]]
        else:
            command = [sys.executable, "-m", "pytest", f"--ds={SETTINGS[mode]}",
                       "-o", f"cache_dir={archive.parent / f'pytest-cache-{mode}'}", *pytest_args]
        return subprocess.run(command, cwd=archive, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
