"""MongoDB storage through beanie on PyMongo's async client.

The only package that knows the driver; beanie documents never leave it.
"""

from storage.database import Database, open_database
from storage.embedded import EmbeddedFerretDB, ferretdb_binary
from storage.errors import CallNotFound, StorageError
from storage.models import CallRecord, CallStatus, Direction, NewCall, Speaker, TurnRecord
from storage.repository import CallRepository, CallStore

__all__ = [
    "CallNotFound",
    "CallRecord",
    "CallRepository",
    "CallStatus",
    "CallStore",
    "Database",
    "Direction",
    "EmbeddedFerretDB",
    "NewCall",
    "Speaker",
    "StorageError",
    "TurnRecord",
    "ferretdb_binary",
    "open_database",
]
