"""MongoDB storage through beanie on PyMongo's async client.

The only package that knows the driver; beanie documents never leave it.
"""

from storage.accounts import AccountRepository, hash_api_key, new_api_key
from storage.assistants import AssistantRepository
from storage.calls import CallRepository, CallStore, new_turn_id
from storage.claims import ClaimRepository
from storage.database import Database, open_database
from storage.deliveries import Attempt, DeliveryRecord, DeliveryStatus, WebhookRepository
from storage.embedded import EmbeddedFerretDB, ferretdb_binary
from storage.errors import (
    CallNotFound,
    DeliveryBusy,
    InvalidCursor,
    NotFound,
    NumberTaken,
    NumberUnavailable,
    RecordTooLarge,
    SecretRotationRaced,
    StorageError,
)
from storage.events import EventRecord, EventRepository
from storage.leases import HeartbeatWriter, LeaseRepository
from storage.models import (
    DEFAULT_WEBHOOK_EVENTS,
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
    NumberAdoption,
    Organization,
    PhoneNumberRecord,
    RecordingKind,
    RecordingState,
    RecordingStatus,
    SipProvider,
    SipTrunkRecord,
    Speaker,
    TrunkKind,
    TurnRecord,
    TurnTakingConfig,
    WebhookEventType,
    normalize_e164,
)
from storage.numbers import PhoneNumberRepository
from storage.redaction import redact_credentials, redact_url
from storage.sip import SipRepository

__all__ = [
    "DEFAULT_WEBHOOK_EVENTS",
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
    "ClaimRepository",
    "Database",
    "DeliveryBusy",
    "DeliveryRecord",
    "DeliveryStatus",
    "Direction",
    "DispatchKind",
    "DispatchRuleRecord",
    "EmbeddedFerretDB",
    "EventRecord",
    "EventRepository",
    "HeartbeatWriter",
    "InvalidCursor",
    "LeaseRepository",
    "NewCall",
    "NotFound",
    "NumberAdoption",
    "NumberTaken",
    "NumberUnavailable",
    "Organization",
    "PhoneNumberRecord",
    "PhoneNumberRepository",
    "RecordTooLarge",
    "RecordingKind",
    "RecordingState",
    "RecordingStatus",
    "SecretRotationRaced",
    "SipProvider",
    "SipRepository",
    "SipTrunkRecord",
    "Speaker",
    "StorageError",
    "TrunkKind",
    "TurnRecord",
    "TurnTakingConfig",
    "WebhookEventType",
    "WebhookRepository",
    "ferretdb_binary",
    "hash_api_key",
    "new_api_key",
    "new_turn_id",
    "normalize_e164",
    "open_database",
    "redact_credentials",
    "redact_url",
]
