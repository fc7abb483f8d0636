"""Serve the patched archive's HTTP API on 127.0.0.1 for clients in other processes (dandi-cli
in the project's own virtualenv): migrate, make two approved users with API keys, write
``{"api_url", "api_key", "other_api_key"}`` to the file named by the first argument, then run
the server until stopped, with the archive's scheduled metadata validation every second, as its
Celery beat runs it. Run through ``run.py on run tests/archive/serve.py INFO.json``."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time


def main(info_path: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    os.environ["DJANGO_DANDI_API_URL"] = url  # what /api/info/ tells dandi-cli
    os.environ["DJANGO_DANDI_WEB_APP_URL"] = url

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.ALLOWED_HOSTS = ["127.0.0.1"]  # the test settings serve nobody by default

    call_command("migrate", verbosity=0)
    from dandiapi.api.tests.factories import UserFactory
    from rest_framework.authtoken.models import Token

    key, other_key = (Token.objects.get_or_create(user=UserFactory.create())[0].key for _ in range(2))
    with open(info_path + ".partial", "w") as f:
        json.dump({"api_url": f"{url}/api", "api_key": key, "other_api_key": other_key}, f)
    os.replace(info_path + ".partial", info_path)
    threading.Thread(target=_validate_forever, name="validation", daemon=True).start()
    call_command("runserver", f"127.0.0.1:{port}", use_reloader=False, use_threading=True, verbosity=0)


def _validate_forever() -> None:
    from dandiapi.api.tasks.scheduled import validate_draft_version_metadata, validate_pending_asset_metadata

    while True:
        validate_pending_asset_metadata()
        validate_draft_version_metadata()
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1])
