"""A campaign's contact upload at 100 000 rows on the embedded store: what checking and
storing them costs, and what reading them back costs (the dialer's start, the API's pages).

Starts an embedded FerretDB (or uses `--mongodb-url`). For each repetition, a fresh
campaign gets `--rows` contacts (a CSV of number, name, day, notes; the assistant's prompt
uses {{name}} and {{day}}), timed as:

- parse + check: `read_csv` + `check_rows` (pure Python: numbers, zones, placeholders,
  duplicates),
- existing numbers: `existing_numbers` on the empty campaign, then on the full one
  (what a second upload to it pays),
- store: `add_contacts` (one batch, chunk docs of 2000 rows),
- the whole request: `POST /campaigns/{id}/contacts` through the app in-process
  (Starlette's test client: routing, key check, body read, all of the above),
- read back: `all_contacts` (the dialer leader's start), `counts`, a first and a last page
  of `contacts(limit=100)`.

    python bench/campaign_upload_bench.py [--rows 100000] [--reps 3] [--mongodb-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from gateway.api.contact_upload import check_rows, read_csv
from gateway.app import create_app
from gateway.call.records import CallInputLimits
from gateway.settings import Settings
from storage import (
    AssistantConfig,
    CampaignSpec,
    Database,
    Schedule,
    open_database,
)
from tests.ferretdb_server import embedded_ferretdb

KEY = "vg_bench-campaign-upload-key-000000000000"
CALLER_ID = "+15550009000"
CONFIG = AssistantConfig(
    name="Reminders",
    system_prompt="You remind {{name}} of the appointment on {{day}}.",
    greeting="Hello {{name}}!",
)


def _csv(rows: int, base: int) -> bytes:
    lines = ["to_number,name,day,notes"]
    lines += [f"+1{base + i:010d},Person {i},Monday,row {i} of the bench" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


async def _timed(action: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await action()
    return time.perf_counter() - start, result


def _spec() -> CampaignSpec:
    return CampaignSpec(
        name="bench",
        assistant_id="asst-bench",
        call_service="twilio",
        from_number=CALLER_ID,
        schedule=Schedule(time_zone="UTC"),
    )


async def _storage_run(db: Database, rows: int, base: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    body = _csv(rows, base)
    camp = await db.campaigns.create("org-bench", _spec())
    figures["existing numbers (empty)"], existing = await _timed(
        lambda: db.campaigns.existing_numbers(camp.id)
    )
    limits = CallInputLimits(
        metadata_max_bytes=16 * 1024, metadata_max_keys=64, prompt_max_chars=40_000
    )
    start = time.perf_counter()
    checked = check_rows(
        read_csv(body),
        required=frozenset({"name", "day"}),
        existing=existing,
        limits=limits,
        config=CONFIG,
        from_number=CALLER_ID,
    )
    figures["parse + check"] = time.perf_counter() - start
    assert not checked.rejected and len(checked.accepted) == rows
    figures["store (add_contacts)"], added = await _timed(
        lambda: db.campaigns.add_contacts(camp.id, checked.accepted)
    )
    assert added == rows
    figures["existing numbers (full)"], numbers = await _timed(
        lambda: db.campaigns.existing_numbers(camp.id)
    )
    assert len(numbers) == rows
    figures["all_contacts"], contacts = await _timed(lambda: db.campaigns.all_contacts(camp.id))
    assert len(contacts) == rows
    figures["counts"], _ = await _timed(lambda: db.campaigns.counts(camp.id))
    figures["contacts page (first)"], _ = await _timed(
        lambda: db.campaigns.contacts(camp.id, limit=100)
    )
    figures["contacts page (last)"], _ = await _timed(
        lambda: db.campaigns.contacts(camp.id, after_n=rows - 100, limit=100)
    )
    return figures


def _http_run(url: str, db_name: str, rows: int, reps: int) -> list[float]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url="https://gw.example.com",
        twilio_auth_token="bench-token",  # type: ignore[arg-type]
        twilio_account_sid="AC" + "4" * 32,
        gateway_api_key=KEY,  # type: ignore[arg-type]
        mongodb_url=url,
        mongodb_db=db_name,
    )
    headers = {"x-api-key": KEY}
    times: list[float] = []
    with TestClient(create_app(settings), base_url="https://gw.example.com") as client:
        assert client.post("/numbers", json={"number": CALLER_ID}, headers=headers).is_success
        assistant = client.post("/assistants", json=CONFIG.model_dump(), headers=headers)
        assert assistant.status_code == 201, assistant.text
        for rep in range(reps):
            created = client.post(
                "/campaigns",
                json={
                    "name": f"bench {rep}",
                    "assistant_id": assistant.json()["id"],
                    "from_number": CALLER_ID,
                    # Opens in 2035: the app's dialer (if any) dials nothing of the bench.
                    "schedule": {"start_at": "2035-01-01T00:00:00Z"},
                },
                headers=headers,
            )
            assert created.status_code == 201, created.text
            body = _csv(rows, 5_550_000_000 + rep * rows)
            start = time.perf_counter()
            upload = client.post(
                f"/campaigns/{created.json()['id']}/contacts",
                content=body,
                headers={**headers, "content-type": "text/csv"},
            )
            times.append(time.perf_counter() - start)
            assert upload.status_code == 201, upload.text[:500]
    return times


async def _main(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        url = args.mongodb_url
        if url is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            server = stack.enter_context(embedded_ferretdb(data_dir))
            url = server.url
        db_name = "bench_campaigns_" + uuid.uuid4().hex[:8]
        db = await open_database(url, db_name)
        runs: list[dict[str, float]] = []
        try:
            for rep in range(args.reps):
                runs.append(await _storage_run(db, args.rows, 5_550_000_000 + rep * args.rows))
        finally:
            await db.close()
        http = await asyncio.to_thread(_http_run, url, db_name + "_http", args.rows, args.reps)
    print(f"{args.rows} rows, {args.reps} repetitions, median (max) in seconds")
    for name in runs[0]:
        values = [r[name] for r in runs]
        print(f"  {name:28s} {statistics.median(values):8.3f} ({max(values):.3f})")
    print(f"  {'POST .../contacts (CSV)':28s} {statistics.median(http):8.3f} ({max(http):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mongodb-url", default=None)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
