"""A base for the frozen dataclasses that report what an operation did."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any


class JsonRecord:
    """Mixin for result dataclasses: :meth:`to_json` gives a JSON-ready dict (for ``--json``)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)  # type: ignore[call-overload]
