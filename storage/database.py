"""Opening the database: PyMongo's native async client (Motor's successor) and beanie."""

from __future__ import annotations

from beanie import init_beanie
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from storage.documents import CallDocument, TurnDocument
from storage.errors import StorageError
from storage.repository import CallRepository


class Database:
    """An open database: the repositories over it, and `close()`."""

    def __init__(self, client: AsyncMongoClient[dict[str, object]]) -> None:
        self._client = client
        self.calls = CallRepository()

    async def close(self) -> None:
        await self._client.close()


async def open_database(url: str, db_name: str, *, timeout_s: float = 10.0) -> Database:
    """Connect, check the server answers, and initialise beanie's documents and indexes."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        url, tz_aware=True, serverSelectionTimeoutMS=int(timeout_s * 1000)
    )
    try:
        await client.admin.command("ping")
        await init_beanie(database=client[db_name], document_models=[CallDocument, TurnDocument])
    except PyMongoError as exc:
        await client.close()
        raise StorageError(f"cannot open MongoDB at {url}: {exc}") from exc
    return Database(client)
