"""Storage errors: what the rest of the gateway sees instead of driver exceptions."""

from __future__ import annotations


class StorageError(Exception):
    """The database failed or cannot be reached."""


class CallNotFound(StorageError):
    """No call with that id."""
