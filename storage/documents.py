"""Beanie documents: the stored shape of calls and turns (they never leave `storage/`).

Turns live in their own collection so each is one insert when it happens (nothing
read-modify-written, nothing lost in a crash) and cutting an interrupted turn is one update.
Everything here runs on FerretDB 1.24 (SQLite) as on MongoDB: no transactions, `$lookup`,
TTL, text or partial indexes; plain and unique indexes only.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import pymongo
from beanie import Document
from pydantic import Field


class CallDocument(Document):
    transport: str
    call_sid: str
    stream_sid: str | None = None
    from_number: str = ""
    to_number: str = ""
    direction: str = "inbound"
    assistant_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    status: str = "ringing"
    started_at: datetime
    ended_at: datetime | None = None
    duration_s: float | None = None
    end_reason: str | None = None
    latency_p50: dict[str, float] | None = None
    latency_p95: dict[str, float] | None = None
    usage: dict[str, int] | None = None  # LLM tokens of the whole call

    class Settings:
        name = "calls"
        indexes: ClassVar[list[pymongo.IndexModel]] = [
            pymongo.IndexModel([("call_sid", pymongo.ASCENDING)], name="call_sid"),
            pymongo.IndexModel([("started_at", pymongo.DESCENDING)], name="started_at_desc"),
        ]


class TurnDocument(Document):
    call_id: str
    index: int
    speaker: str
    text: str
    start_ms: float
    end_ms: float
    interrupted: bool = False
    # Agent turns: ms from the caller's end of speech to each stage of the answer.
    latency: dict[str, float] | None = None
    created_at: datetime

    class Settings:
        name = "turns"
        indexes: ClassVar[list[pymongo.IndexModel]] = [
            # Unique: two writers can never store two turns at one position of a call.
            pymongo.IndexModel(
                [("call_id", pymongo.ASCENDING), ("index", pymongo.ASCENDING)],
                name="call_id_index_unique",
                unique=True,
            ),
        ]
