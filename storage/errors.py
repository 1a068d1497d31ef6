"""Storage errors: what the rest of the gateway sees instead of driver exceptions."""

from __future__ import annotations


class StorageError(Exception):
    """The database failed or cannot be reached."""


class NotFound(StorageError):
    """No such record (or not one the caller's organisation may see)."""


class CallNotFound(NotFound):
    """No call with that id."""


class CampaignNotFound(NotFound):
    """No campaign with that id in the caller's organisation."""


class CampaignStateConflict(StorageError):
    """A campaign's state forbids the change asked (pause/resume of a cancelled or
    completed campaign, cancel of a completed one, contacts added to either)."""


class ContactsRaced(StorageError):
    """An upload of contacts raced another upload to the same campaign holding some of the
    same numbers (`numbers`): nothing of this upload was added; send it again."""

    def __init__(self, numbers: list[str]) -> None:
        shown = ", ".join(numbers[:5]) + (" ..." if len(numbers) > 5 else "")
        super().__init__(
            f"{len(numbers)} numbers of this upload were being added by another upload at "
            f"the same time ({shown}): nothing was added, send it again"
        )
        self.numbers = numbers


class InvalidCursor(StorageError):
    """A page cursor this store did not issue."""


class RecordTooLarge(StorageError):
    """A document over the server's size limit (16 MiB); nothing was written."""


class NumberTaken(StorageError):
    """A phone number another assistant of the same organisation already answers."""


class NumberUnavailable(StorageError):
    """A phone number the organisation may not have: another's, or reserved by the operator
    (the message says which number, never whose it is)."""


class DeliveryBusy(StorageError):
    """A gateway holds the delivery's lease right now (it is being sent)."""


class SecretRotationRaced(StorageError):
    """Two rotations of one organisation's webhook secret at once: the other one won."""
