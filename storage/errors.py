"""Storage errors: what the rest of the gateway sees instead of driver exceptions."""

from __future__ import annotations


class StorageError(Exception):
    """The database failed or cannot be reached."""


class NotFound(StorageError):
    """No such record (or not one the caller's organisation may see)."""


class CallNotFound(NotFound):
    """No call with that id."""
