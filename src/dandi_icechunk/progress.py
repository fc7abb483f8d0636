"""Progress reporting for long work: files, bytes and rate."""

from __future__ import annotations

import sys
from typing import Protocol


class Progress(Protocol):
    """Receives progress of one phase at a time (hashing, writing, exporting...)."""

    def start(self, label: str, files: int, nbytes: int) -> None:
        """A phase begins with ``files`` files of ``nbytes`` bytes to do."""
        ...

    def advance(self, files: int, nbytes: int) -> None:
        """``files`` more files of ``nbytes`` bytes are done."""
        ...

    def finish(self) -> None:
        """The current phase is over."""
        ...


class NoProgress:
    """A :class:`Progress` that shows nothing."""

    def start(self, label: str, files: int, nbytes: int) -> None:  # noqa: D102
        pass

    def advance(self, files: int, nbytes: int) -> None:  # noqa: D102
        pass

    def finish(self) -> None:  # noqa: D102
        pass


class TerminalProgress:
    """A progress bar on stderr: bytes with rate, and files done out of total."""

    def __init__(self) -> None:
        self._bar = None
        self._files = 0
        self._total_files = 0

    def start(self, label: str, files: int, nbytes: int) -> None:  # noqa: D102
        from tqdm import tqdm

        self.finish()
        self._files, self._total_files = 0, files
        self._bar = tqdm(
            total=nbytes, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
            file=sys.stderr, leave=True, dynamic_ncols=True,
        )
        self._bar.set_postfix_str(f"0/{files} files")

    def advance(self, files: int, nbytes: int) -> None:  # noqa: D102
        if self._bar is not None:
            self._files += files
            self._bar.set_postfix_str(f"{self._files}/{self._total_files} files", refresh=False)
            self._bar.update(nbytes)

    def finish(self) -> None:  # noqa: D102
        if self._bar is not None:
            self._bar.close()
            self._bar = None
