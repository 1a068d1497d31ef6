"""MongoDB storage through beanie on PyMongo's async client.

The only package that knows the driver; beanie documents never leave it.
"""

from storage.accounts import AccountRepository, hash_api_key, new_api_key
from storage.assistants import AssistantRepository, NumberTaken
from storage.database import Database, open_database
from storage.embedded import EmbeddedFerretDB, ferretdb_binary
from storage.errors import CallNotFound, NotFound, StorageError
from storage.models import (
    E164,
    ApiKeyRecord,
    AssistantConfig,
    AssistantRecord,
    CallFilter,
    CallPage,
    CallRecord,
    CallStatus,
    Direction,
    DispatchKind,
    DispatchRuleRecord,
    NewCall,
    Organization,
    SipProvider,
    SipTrunkRecord,
    Speaker,
    TrunkKind,
    TurnRecord,
)
from storage.repository import CallRepository, CallStore, InvalidCursor
from storage.sip import SipRepository

__all__ = [
    "E164",
    "AccountRepository",
    "ApiKeyRecord",
    "AssistantConfig",
    "AssistantRecord",
    "AssistantRepository",
    "CallFilter",
    "CallNotFound",
    "CallPage",
    "CallRecord",
    "CallRepository",
    "CallStatus",
    "CallStore",
    "Database",
    "Direction",
    "DispatchKind",
    "DispatchRuleRecord",
    "EmbeddedFerretDB",
    "InvalidCursor",
    "NewCall",
    "NotFound",
    "NumberTaken",
    "Organization",
    "SipProvider",
    "SipRepository",
    "SipTrunkRecord",
    "Speaker",
    "StorageError",
    "TrunkKind",
    "TurnRecord",
    "ferretdb_binary",
    "hash_api_key",
    "new_api_key",
    "open_database",
]
