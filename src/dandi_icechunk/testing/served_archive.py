"""The dandi-archive that ``tests/archive/serve.py`` serves on 127.0.0.1, as the dandi-cli tests
and the dandi upload benchmark drive it.

>>> archive = ServedArchive.load("/tmp/srv/archive.json")
>>> dandiset_dir = archive.new_dandiset(tmp_path)        # created in the archive, laid out locally
>>> subprocess.run(["dandi", "upload", "-i", archive.api_url], cwd=dandiset_dir, env=archive.env())
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests


@dataclass(frozen=True)
class ServedArchive:
    api_url: str
    api_key: str
    other_api_key: str  # a second user's, who owns nothing

    @classmethod
    def load(cls, path: str | Path) -> ServedArchive:
        """Read the JSON ``serve.py`` wrote."""
        info = json.loads(Path(path).read_text())
        return cls(info["api_url"], info["api_key"], info["other_api_key"])

    def call(self, method: str, path: str, *, api_key: str | None = None, timeout: float = 120,
             **kwargs: Any) -> Any:
        """One API call as the owner (or as ``api_key``'s user); raises on an error status."""
        response = requests.request(method, f"{self.api_url}/{path}", timeout=timeout,
                                    headers={"Authorization": f"token {api_key or self.api_key}"}, **kwargs)
        if not response.ok:  # the archive's reason, not only the status
            raise requests.HTTPError(f"{response.status_code} on {method} {path}: {response.text[:500]}", response=response)
        return response.json() if response.content else None

    def wait_until_up(self, timeout: float = 120) -> None:
        """``serve.py`` writes its JSON just before the server starts: wait for ``/info/``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.api_url}/info/", timeout=10).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the archive at {self.api_url} did not answer /info/ in {timeout:.0f} s")
            time.sleep(0.5)

    def new_dandiset(self, parent: Path, name: str = "Icechunk upload") -> Path:
        """A new publishable Dandiset, and its local directory under ``parent`` as ``dandi
        download`` lays it out (``dandiset.yaml`` naming it)."""
        created = self.call("POST", "dandisets/", json={"name": name, "metadata": {
            "name": name, "description": "dandi-cli against the archive", "license": ["spdx:CC-BY-4.0"],
            "contributor": [{"schemaKey": "Person", "name": "Lab, A", "email": "a@example.org",
                             "roleName": ["dcite:ContactPerson"]}]}})
        root = parent / created["identifier"]
        root.mkdir()
        (root / "dandiset.yaml").write_text(f"identifier: DANDI:{created['identifier']}\n")
        return root

    def env(self, api_key: str | None = None) -> dict[str, str]:
        """The environment for a ``dandi`` process: the API key in the variable dandi-cli reads
        for this instance, and no version check against the internet at start-up."""
        from dandi.utils import get_instance

        variable = get_instance(self.api_url).name.upper().replace("-", "_") + "_API_KEY"
        return {**os.environ, variable: api_key or self.api_key, "DANDI_NO_ET": "1"}
