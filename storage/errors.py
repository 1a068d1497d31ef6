"""Storage errors: what the rest of the gateway sees instead of driver exceptions."""

from __future__ import annotations


class StorageError(Exception):
    """The database failed or cannot be reached."""


class NotFound(StorageError):
    """No such record (or not one the caller's organisation may see)."""


class CallNotFound(NotFound):
    """No call with that id."""


class InvalidCursor(StorageError):
    """A page cursor this store did not issue."""


class RecordTooLarge(StorageError):
    """A document over the server's size limit (16 MiB); nothing was written."""


class NumberTaken(StorageError):
    """A phone number another assistant already answers."""


class DeliveryBusy(StorageError):
    """A gateway holds the delivery's lease right now (it is being sent)."""
