"""Events a gateway stored but did not finish, repaired on the real FerretDB (in-process
analyst, publisher and outbox; nothing is sent: the deliveries' order is their events'
places, which the claim follows).

- `call.analyzed` whose call's report is not queued yet (gateway A stored `call.ended`
  and died before queueing it) is not published: the analyst gives it up at once, and
  the report round publishes it right after `call.ended`'s delivery.
- the report round queues an earlier event whose delivery is missing and the final
  `call.status` the lifecycle did not publish, before `call.ended`.
- an event publish cancelled half-way (a write's timeout) leaves one readable event.
- a re-run asked for while the same call's analysis runs here is run once that ends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

from gateway.analysis import CallAnalyst
from gateway.analysis.llm import LLMAnswer
from storage import (
    AnalysisPlan,
    AssistantConfig,
    CallStatus,
    Database,
    DeliveryRecord,
    Direction,
    EventRepository,
    NewCall,
)
from storage.deliveries import WEBHOOK_DUE
from storage.documents import CallDocument, WebhookDeliveryDocument
from webhooks.call_events import CallEvents
from webhooks.events import CALL_ENDED, EVENT_TYPES, EventType, event_key
from webhooks.outbox import RetryPolicy, WebhookOutbox
from webhooks.ssrf import SsrfGuard

URL = "http://127.0.0.1:9/hooks"


class AnsweringLLM:
    """Answers at once; `hold` (when set) holds the first answer until `release`."""

    def __init__(self, *, hold: bool = False) -> None:
        self.asked = 0
        self.hold = hold
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def complete(self, *, model: str, messages: Any) -> LLMAnswer:
        self.asked += 1
        if self.hold and self.asked == 1:
            self.entered.set()
            await self.release.wait()
        return LLMAnswer(f'{{"summary": "answer {self.asked}"}}', 10, 3)

    async def aclose(self) -> None:
        return None


async def _finished_call(database: Database, events: list[EventType]) -> tuple[str, str]:
    """A finished call (two turns) of an assistant sending `events` to a webhook, with an
    analysis plan: its id and organisation."""
    org = await database.accounts.ensure_organization("acme")
    config = AssistantConfig(
        name="A", system_prompt="Help.", webhook_url=URL, webhook_events=events,
        analysis=AnalysisPlan(summary_prompt="Summarise."),
    )  # fmt: skip
    assistant = await database.assistants.create(org.id, config)
    started = datetime.now(UTC) - timedelta(seconds=30)
    call = await database.calls.create_call(
        NewCall(
            org_id=org.id, transport="twilio", call_sid="CA" + "1" * 32,
            from_number="+15550001111", to_number="+15550002222",
            direction=Direction.INBOUND, assistant_id=assistant.id,
        ),
        started_at=started,
    )  # fmt: skip
    await database.calls.add_turn(call.id, speaker="agent", text="Hello", start_ms=0, end_ms=900)
    await database.calls.add_turn(
        call.id, speaker="caller", text="where is my order", start_ms=1200, end_ms=1800
    )
    await database.calls.set_status(call.id, CallStatus.IN_PROGRESS)
    return call.id, org.id


async def _finish(database: Database, call_id: str) -> None:
    await database.calls.finish_call(
        call_id,
        status=CallStatus.COMPLETED,
        end_reason="caller-hangup",
        ended_at=datetime.now(UTC) - timedelta(seconds=5),
    )


def _parts(
    database: Database, events: CallEvents | None = None
) -> tuple[CallEvents, WebhookOutbox]:
    events = events or CallEvents(
        events=EventRepository(), webhooks=database.webhooks, assistants=database.assistants
    )
    outbox = WebhookOutbox(
        webhooks=database.webhooks, calls=database.calls, assistants=database.assistants,
        guard=SsrfGuard(["127.0.0.1"]), policy=RetryPolicy(base_s=0.05, cap_s=0.1),
        timeout_s=2.0, poll_s=0.02, events=events,
    )  # fmt: skip
    return events, outbox


def _analyst(database: Database, llm: Any, events: CallEvents, **options: Any) -> CallAnalyst:
    return CallAnalyst(
        analyses=database.analyses, calls=database.calls, assistants=database.assistants,
        llm=llm, model_for=lambda config: "fake-model", events=events,
        **{"lease_s": 30.0, "poll_s": 3600.0, **options},
    )  # fmt: skip


async def _until(condition: Any, what: str, within_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


async def _deliveries(database: Database, org_id: str, call_id: str) -> list[DeliveryRecord]:
    """The call's deliveries in the order they go out (their events' places)."""
    found = await database.webhooks.list(org_id, call_id=call_id, limit=100)
    return sorted(found, key=lambda d: d.seq or 0)


def _kind(delivery: DeliveryRecord) -> str:
    return delivery.id.split("_", 2)[2]  # dlv_<call>_<what>


async def test_an_analysis_stored_before_its_report_is_queued_goes_out_after_call_ended(
    database: Database,
) -> None:
    """Gateway A's outbox stored call.ended and died before queueing it; gateway B's
    analyst stores the analysis meanwhile: call.analyzed waits (owed, no slot held) and
    B's report round queues call.ended, then call.analyzed."""
    call_id, org_id = await _finished_call(database, ["call.ended", "call.analyzed"])
    await _finish(database, call_id)
    # A's report round, cut short: the event stored, no delivery, the report still owed.
    a = EventRepository()
    await a.publish(
        key=event_key(call_id, CALL_ENDED), org_id=org_id, call_id=call_id, type=CALL_ENDED,
        body="{}", at=datetime.now(UTC),
    )  # fmt: skip
    events, outbox = _parts(database)
    llm = AnsweringLLM()
    analyst = _analyst(database, llm, events, concurrency=1)
    worker = asyncio.create_task(analyst.run())
    try:
        analyst.poke(call_id)

        async def stored() -> bool:
            analysis = (await database.calls.get_call(call_id, with_turns=False)).analysis
            return analysis is not None and analysis.status == "done"

        await _until(stored, "the analysis is stored")
        # Its slot is free at once: another call's analysis runs (one slot only).
        other_id, _ = await _finished_call(database, ["call.ended"])
        await _finish(database, other_id)
        analyst.poke(other_id)

        async def other_stored() -> bool:
            analysis = (await database.calls.get_call(other_id, with_turns=False)).analysis
            return analysis is not None and analysis.status == "done"

        await _until(other_stored, "the second call's analysis ran")
        assert await _deliveries(database, org_id, call_id) == []  # nothing before the report
        await outbox.queue_owed_reports()
        assert [_kind(d) for d in await _deliveries(database, org_id, call_id)] == [
            "call_ended",
            f"call_analyzed_{_ms(await database.calls.get_call(call_id))}",
        ]
        # The analyst's next look (any gateway's poll) finds it published: owed no more.
        analyst.poke()
        await _until(
            lambda: _not_owed(database, call_id), "the analysis is owed no more", within_s=30
        )
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await outbox.aclose()
    assert llm.asked == 2


def _ms(call: Any) -> int:
    return int(call.analysis.completed_at.timestamp() * 1000)


async def _not_owed(database: Database, call_id: str) -> bool:
    raw = await CallDocument.get_pymongo_collection().find_one(
        {"_id": ObjectId(call_id)}, {"analysis_pending": 1}
    )
    return raw is not None and not raw.get("analysis_pending")


async def test_the_report_round_queues_a_lost_delivery_and_the_final_status_before_call_ended(
    database: Database,
) -> None:
    """The lifecycle published started, in-progress and both turns; turn 1's delivery was
    lost (the process died between its event and its delivery) and the final status was
    never published (the lifecycle's publish failed): the report round queues both, in
    their places, before call.ended."""
    every = list(EVENT_TYPES)
    call_id, org_id = await _finished_call(database, every)
    events, outbox = _parts(database)
    call = await database.calls.get_call(call_id)
    await events.started(call)
    await events.status(call, CallStatus.IN_PROGRESS)
    for turn in call.turns:
        await events.turn(call, turn)
    await _finish(database, call_id)
    lost = f"dlv_{call_id}_call_turn_1"
    await WebhookDeliveryDocument.get_pymongo_collection().delete_one({"_id": lost})
    await (
        WebhookDeliveryDocument.get_pymongo_collection()
        .database[WEBHOOK_DUE]
        .delete_one({"_id": lost})
    )
    before = [_kind(d) for d in await _deliveries(database, org_id, call_id)]
    assert before == ["call_started", "call_status_in-progress", "call_turn_0"]
    try:
        await outbox.queue_owed_reports()
    finally:
        await outbox.aclose()
    after = [_kind(d) for d in await _deliveries(database, org_id, call_id)]
    assert after == [
        "call_started", "call_status_in-progress", "call_turn_0", "call_turn_1",
        "call_status_completed", "call_ended",
    ], after  # fmt: skip
    # The lost turn went back to its event's place, with its body (no second event).
    stored, _ = await database.events.read_after(org_id, 0)
    assert [e.key.removeprefix(call_id + "_") for e in stored] == [
        "call_started", "call_status_in-progress", "call_turn_0", "call_turn_1",
        "call_status_completed", "call_ended",
    ]  # fmt: skip


async def test_a_publish_cancelled_half_way_leaves_one_readable_event(
    database: Database,
) -> None:
    """A write's timeout cancels the publish at any point; its retry finds what it stored
    (never a second readable event of the same key)."""
    repo = EventRepository()
    cut = 0
    for point in range(12):
        key = f"call_x_call_turn_{point}"
        publish = asyncio.create_task(
            repo.publish(key=key, org_id="org", call_id="x", type="call.turn", body="{}",
                         at=datetime.now(UTC))
        )  # fmt: skip
        for _ in range(point):  # cut after `point` switches of the loop
            await asyncio.sleep(0)
        publish.cancel()
        try:
            await publish
        except asyncio.CancelledError:
            cut += 1
        await repo.publish(
            key=key, org_id="org", call_id="x", type="call.turn", body="{}", at=datetime.now(UTC)
        )
    # The shielded halves finish on their own.
    halves = [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "EventRepository._publish"
    ]
    await asyncio.gather(*halves)
    assert cut > 0
    read, _ = await EventRepository().read_after("org", 0, limit=500)
    keys = [e.key for e in read]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 12, keys


async def test_a_rerun_asked_while_the_analysis_runs_here_runs_once_it_ends(
    database: Database,
) -> None:
    call_id, _ = await _finished_call(database, ["call.ended"])
    await _finish(database, call_id)
    events, outbox = _parts(database)
    await outbox.queue_owed_reports()  # the report is queued: call.analyzed may go out
    await outbox.aclose()
    llm = AnsweringLLM(hold=True)
    analyst = _analyst(database, llm, events)  # no poll within the test
    worker = asyncio.create_task(analyst.run())
    try:
        analyst.poke(call_id)
        await asyncio.wait_for(llm.entered.wait(), 30)
        await database.analyses.request_analysis(call_id, now=datetime.now(UTC))
        analyst.poke(call_id)  # as POST /calls/{id}/analyze does: it runs here already
        llm.release.set()

        async def rerun_stored() -> bool:
            analysis = (await database.calls.get_call(call_id, with_turns=False)).analysis
            return analysis is not None and analysis.summary == "answer 2"

        await _until(rerun_stored, "the re-run ran")
        await _until(lambda: _not_owed(database, call_id), "published")
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert llm.asked == 2
