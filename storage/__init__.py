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
    RecordingKind,
    RecordingState,
    RecordingStatus,
    SipProvider,
    SipTrunkRecord,
    Speaker,
    TrunkKind,
    TurnRecord,
)
from storage.repository import CallRepository, CallStore, InvalidCursor
from storage.sip import SipRepository
from storage.webhooks import Attempt, DeliveryRecord, DeliveryStatus, WebhookRepository

__all__ = [
    "E164",
    "AccountRepository",
    "ApiKeyRecord",
    "AssistantConfig",
    "AssistantRecord",
    "AssistantRepository",
    "Attempt",
    "CallFilter",
    "CallNotFound",
    "CallPage",
    "CallRecord",
    "CallRepository",
    "CallStatus",
    "CallStore",
    "Database",
    "DeliveryRecord",
    "DeliveryStatus",
    "Direction",
    "DispatchKind",
    "DispatchRuleRecord",
    "EmbeddedFerretDB",
    "InvalidCursor",
    "NewCall",
    "NotFound",
    "NumberTaken",
    "Organization",
    "RecordingKind",
    "RecordingState",
    "RecordingStatus",
    "SipProvider",
    "SipRepository",
    "SipTrunkRecord",
    "Speaker",
    "StorageError",
    "TrunkKind",
    "TurnRecord",
    "WebhookRepository",
    "ferretdb_binary",
    "hash_api_key",
    "new_api_key",
    "open_database",
]
