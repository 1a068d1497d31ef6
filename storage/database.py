"""Opening the database: PyMongo's native async client (Motor's successor) and beanie."""

from __future__ import annotations

from datetime import UTC, datetime

from beanie import Document, init_beanie
from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from storage.accounts import AccountRepository
from storage.analyses import AnalysisRepository
from storage.assistants import AssistantRepository
from storage.call_index import CallIndex
from storage.calls import CallRepository
from storage.campaigns import CAMPAIGN_INDEXES, CampaignRepository
from storage.claims import EXPIRING_INDEXES, ClaimRepository
from storage.deliveries import DUE_INDEXES, WebhookRepository
from storage.do_not_call import DO_NOT_CALL_INDEXES, DoNotCallRepository
from storage.documents import (
    ApiKeyDocument,
    AssistantDocument,
    CallDocument,
    DispatchRuleDocument,
    MigrationDocument,
    OrganizationDocument,
    PhoneNumberDocument,
    SipTrunkDocument,
    TurnDocument,
    WebhookDeliveryDocument,
)
from storage.errors import StorageError
from storage.events import EVENT_INDEXES, EventRepository
from storage.leases import LeaseRepository
from storage.live_calls import LIVE_CALL_INDEXES
from storage.numbers import PhoneNumberRepository
from storage.redaction import redact_credentials, redact_url
from storage.sip import SipRepository

_DOCUMENTS: list[type[Document]] = [
    CallDocument,
    TurnDocument,
    OrganizationDocument,
    ApiKeyDocument,
    AssistantDocument,
    SipTrunkDocument,
    DispatchRuleDocument,
    WebhookDeliveryDocument,
    PhoneNumberDocument,
    MigrationDocument,
]


async def _ensure_indexes(
    collection: AsyncCollection[dict[str, object]], indexes: list[IndexModel]
) -> None:
    """Create the indexes a collection lacks, by name.

    Beanie re-sends every index at start; FerretDB 1.24 panics and drops the connection on a
    `createIndexes` whose indexes (two or more) all exist already, so only missing ones are sent.
    """
    existing = {index["name"] async for index in await collection.list_indexes()}
    missing = [index for index in indexes if index.document["name"] not in existing]
    if missing:
        await collection.create_indexes(missing)


class Database:
    """An open database: its repositories (`calls`, `accounts`, `assistants`, `sip`,
    `webhooks`, `leases`, `claims`, `numbers`, `analyses`, `events`, `campaigns`,
    `do_not_call`), and `close()`.

    Beanie binds document classes to one database per process: the last `open_database`
    wins, so a process opens one at a time (tests close theirs before opening another).
    """

    def __init__(self, client: AsyncMongoClient[dict[str, object]]) -> None:
        self._client = client
        self.calls = CallRepository()
        self.accounts = AccountRepository()
        self.assistants = AssistantRepository()
        self.sip = SipRepository()
        self.webhooks = WebhookRepository()
        self.leases = LeaseRepository()
        self.claims = ClaimRepository()
        self.numbers = PhoneNumberRepository()
        self.analyses = AnalysisRepository()
        self.events = EventRepository()
        self.campaigns = CampaignRepository()
        self.do_not_call = DoNotCallRepository()

    async def ping(self) -> None:
        """One round trip to the server (bound it with a timeout); `StorageError` if refused."""
        try:
            await self._client.admin.command("ping")
        except PyMongoError as exc:
            raise StorageError(f"the database does not answer: {exc}") from exc

    async def close(self) -> None:
        try:
            await self._client.close()
        except PyMongoError as exc:
            raise StorageError(
                f"closing the database connection failed: {redact_credentials(str(exc))}"
            ) from exc


async def open_database(url: str, db_name: str, *, timeout_s: float = 10.0) -> Database:
    """Connect, check the server answers, and initialise beanie's documents and indexes."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        url, tz_aware=True, serverSelectionTimeoutMS=int(timeout_s * 1000)
    )
    try:
        await client.admin.command("ping")
        database = client[db_name]
        await init_beanie(database=database, document_models=_DOCUMENTS, skip_indexes=True)
        for document in _DOCUMENTS:
            meta = document.Settings
            await _ensure_indexes(database[meta.name], meta.indexes)
        for name, indexes in (
            EXPIRING_INDEXES
            | EVENT_INDEXES
            | DUE_INDEXES
            | CAMPAIGN_INDEXES
            | DO_NOT_CALL_INDEXES
            | LIVE_CALL_INDEXES
        ).items():
            await _ensure_indexes(database[name], indexes)
        # Calls stored before their keys (`storage.call_index`) are keyed once.
        await CallIndex().backfill(now=datetime.now(UTC))
    except PyMongoError as exc:
        await client.close()
        raise StorageError(
            f"cannot open MongoDB at {redact_url(url)}: {redact_credentials(str(exc))}"
        ) from exc
    return Database(client)
