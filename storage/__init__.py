"""MongoDB storage through beanie on PyMongo's async client.

The only package that knows the driver; beanie documents never leave it.
"""

from storage.accounts import AccountRepository, hash_api_key, new_api_key
from storage.assistants import AssistantRepository
from storage.calls import CallRepository, CallStore, new_turn_id
from storage.database import Database, open_database
from storage.deliveries import Attempt, DeliveryRecord, DeliveryStatus, WebhookRepository
from storage.embedded import EmbeddedFerretDB, ferretdb_binary
from storage.errors import (
    CallNotFound,
    DeliveryBusy,
    InvalidCursor,
    NotFound,
    NumberTaken,
    StorageError,
)
from storage.leases import HeartbeatWriter, LeaseRepository
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
from storage.sip import SipRepository

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
    "DeliveryBusy",
    "DeliveryRecord",
    "DeliveryStatus",
    "Direction",
    "DispatchKind",
    "DispatchRuleRecord",
    "EmbeddedFerretDB",
    "HeartbeatWriter",
    "InvalidCursor",
    "LeaseRepository",
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
    "new_turn_id",
    "open_database",
]
