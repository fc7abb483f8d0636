"""The exceptions raised by dandi-icechunk.

Every error a user can cause is a :class:`DandiIcechunkError` whose message names the thing
that was wrong and what to do about it. Icechunk's own exceptions never escape the public API.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Icechunk's span many), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class DandiIcechunkError(Exception):
    """Base class of every error raised by dandi-icechunk."""


class MissingExtraError(DandiIcechunkError, ImportError):
    """A feature needs an optional part that is not installed (``pip install dandi-icechunk[X]``)."""

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(f"{feature} needs the {extra} extra: pip install 'dandi-icechunk[{extra}]'")


class InvalidZarrError(DandiIcechunkError):
    """A local directory is not a Zarr that can be uploaded as it is."""


class InvalidArgumentError(DandiIcechunkError, ValueError):
    """An option is out of its range (for example ``jobs`` below 1)."""


class InvalidZarrIdError(DandiIcechunkError, ValueError):
    """A ``zarr_id`` is not a UUID."""


class StorageLocationError(DandiIcechunkError):
    """A storage URL is malformed, or the storage behind it does not answer."""


class RepositoryNotFoundError(DandiIcechunkError):
    """No repository exists for a ``zarr_id`` at a storage location."""


class RefNotFoundError(DandiIcechunkError):
    """A snapshot ID, tag or branch does not exist in a repository."""


class ConflictError(DandiIcechunkError):
    """A concurrent commit changed the same keys as this one; nothing was committed."""


class IntegrityError(DandiIcechunkError):
    """Stored data does not match the checksum or digests recorded for it."""


class NotAZarrAssetError(DandiIcechunkError):
    """Asset metadata that does not describe a Zarr asset, or names no snapshot."""


class AccessDeniedError(DandiIcechunkError):
    """The storage refused the read: the repository is private (embargoed) to these credentials."""


class ReuseError(DandiIcechunkError):
    """A Zarr cannot be reused as asked; nothing was changed."""


class PublishError(DandiIcechunkError):
    """Publishing was refused; nothing was tagged and no metadata was produced."""


class FinalizeError(DandiIcechunkError):
    """An upload could not be finalized; nothing was recorded."""


class GarbageCollectionError(DandiIcechunkError):
    """Garbage collection was refused; nothing was deleted."""


class CredentialError(DandiIcechunkError):
    """Credentials could not be vended or revoked."""


class ArchiveRequestError(DandiIcechunkError):
    """The DANDI archive refused a request (``status`` is its HTTP status) or could not be
    reached (``status`` is None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PlainUploadOnlyError(ArchiveRequestError):
    """The DANDI archive takes this Zarr's upload only as before (presigned PUTs): it does not
    run the dandi-icechunk adapter, or the Zarr already holds files uploaded that way."""
