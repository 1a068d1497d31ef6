"""The campaign store and the do-not-call list on the real MongoDB-wire server (FerretDB,
or $TEST_MONGODB_URL): uploads all or nothing, states, pages, counts and the dialer's claims."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from storage import (
    CampaignNotFound,
    CampaignSpec,
    CampaignState,
    CampaignStateConflict,
    ContactInput,
    ContactsRaced,
    ContactStatus,
    Database,
    Outcome,
    RetryPolicy,
    Schedule,
)
from storage.campaigns import CAMPAIGN_BATCHES, CAMPAIGN_ROWS, CAMPAIGNS, _collection

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _spec(name: str = "reminders") -> CampaignSpec:
    return CampaignSpec(
        name=name,
        assistant_id="asst-1",
        call_service="twilio",
        from_number="+15550001000",
        schedule=Schedule(
            time_zone="Europe/Paris",
            days=("mon", "tue", "wed", "thu", "fri"),
            hours=("09:00", "17:00"),
            start_at=T0,
            end_at=T0 + timedelta(days=7),
        ),
        max_concurrency=3,
        calls_per_second=2.5,
        retry=RetryPolicy(on=(Outcome.BUSY, Outcome.NO_ANSWER), max_attempts=3, backoff_s=600),
    )


def _contacts(count: int, *, start: int = 0) -> list[ContactInput]:
    return [
        ContactInput(
            to_number=f"+1555{start + i:07d}",
            metadata={"name": f"Person {start + i}", "odd.key": "$x"},
            time_zone="America/New_York" if i % 2 else None,
        )
        for i in range(count)
    ]


async def test_campaigns_are_per_organisation_and_round_trip(database: Database) -> None:
    store = database.campaigns
    first = await store.create("org-a", _spec("first"), at=T0)
    second = await store.create("org-a", _spec("second"), at=T0 + timedelta(seconds=1))
    await store.create("org-b", _spec("theirs"), at=T0)
    assert first.state == CampaignState.ACTIVE and first.contact_count == 0
    got = await store.get("org-a", first.id)
    assert got == first
    assert got.schedule.start_at == T0 and got.retry.on == (Outcome.BUSY, Outcome.NO_ANSWER)
    assert [c.name for c in await store.list("org-a")] == ["second", "first"]
    with pytest.raises(CampaignNotFound):
        await store.get("org-b", first.id)
    with pytest.raises(CampaignNotFound):
        await store.get("org-a", "nope")
    assert await store.get_any(second.id) is not None
    assert await store.get_any("nope") is None


async def test_states_move_idempotently_and_final_ones_refuse(database: Database) -> None:
    store = database.campaigns
    camp = await store.create("org-a", _spec())
    assert (await store.set_state("org-a", camp.id, CampaignState.PAUSED)).state == "paused"
    assert (await store.set_state("org-a", camp.id, CampaignState.PAUSED)).state == "paused"
    assert camp.id not in {c.id for c in await store.active()}
    assert (await store.set_state("org-a", camp.id, CampaignState.ACTIVE)).state == "active"
    assert camp.id in {c.id for c in await store.active()}
    with pytest.raises(CampaignNotFound):
        await store.set_state("org-b", camp.id, CampaignState.PAUSED)
    assert (await store.set_state("org-a", camp.id, CampaignState.CANCELLED)).state == "cancelled"
    assert (await store.set_state("org-a", camp.id, CampaignState.CANCELLED)).state == "cancelled"
    for state in (CampaignState.PAUSED, CampaignState.ACTIVE):
        with pytest.raises(CampaignStateConflict):
            await store.set_state("org-a", camp.id, state)

    done = await store.create("org-a", _spec())
    await store.mark_completed(done.id, at=T0)
    completed = await store.get("org-a", done.id)
    assert completed.state == CampaignState.COMPLETED and completed.completed_at == T0
    for state in (CampaignState.PAUSED, CampaignState.ACTIVE, CampaignState.CANCELLED):
        with pytest.raises(CampaignStateConflict):
            await store.set_state("org-a", done.id, state)
    paused = await store.create("org-a", _spec())
    await store.set_state("org-a", paused.id, CampaignState.PAUSED)
    await store.mark_completed(paused.id, at=T0)  # only an active campaign completes
    assert (await store.get("org-a", paused.id)).state == CampaignState.PAUSED


async def test_uploads_number_contacts_in_order_and_page(database: Database) -> None:
    store = database.campaigns
    camp = await store.create("org-a", _spec())
    assert await store.add_contacts(camp.id, _contacts(2500)) == 2500
    assert await store.add_contacts(camp.id, _contacts(3, start=5000)) == 3
    assert (await store.get("org-a", camp.id)).contact_count == 2503
    numbers = await store.existing_numbers(camp.id)
    assert len(numbers) == 2503 and "+15550005002" in numbers

    page = await store.contacts(camp.id, limit=100)
    assert [c.n for c in page] == list(range(1, 101))
    assert page[0].metadata == {"name": "Person 0", "odd.key": "$x"}
    assert page[1].time_zone == "America/New_York" and page[0].time_zone is None
    assert page[0].status == ContactStatus.PENDING and page[0].attempts == 0
    tail = await store.contacts(camp.id, after_n=2450, limit=100)
    assert [c.n for c in tail] == list(range(2451, 2504))
    assert tail[-1].to_number == "+15550005002"

    contacts = await store.all_contacts(camp.id)
    assert [c.n for c in contacts] == list(range(1, 2504))
    changed = [
        replace(
            contacts[4],
            status=ContactStatus.DONE,
            attempts=2,
            outcome=Outcome.COMPLETED,
            call_ids=("c1", "c2"),
            updated_at=T0,
        ),
        replace(
            contacts[9],
            attempts=1,
            outcome=Outcome.BUSY,
            next_at=T0 + timedelta(minutes=10),
            updated_at=T0,
        ),
    ]
    for contact in changed:
        await database.campaigns.save_contact(contact)
    done = await store.contacts(camp.id, status=ContactStatus.DONE)
    assert [(c.n, c.outcome, c.call_ids) for c in done] == [(5, Outcome.COMPLETED, ("c1", "c2"))]
    pending = await store.contacts(camp.id, status=ContactStatus.PENDING, limit=10)
    assert [c.n for c in pending] == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert pending[8].next_at == T0 + timedelta(minutes=10) and pending[8].attempts == 1
    counts = await store.counts(camp.id)
    assert counts.total == 2503
    assert counts.by_status == {"pending": 2502, "calling": 0, "done": 1, "cancelled": 0}
    assert counts.by_outcome == {"completed": 1, "busy": 1}


async def test_an_upload_that_never_commits_adds_nothing(database: Database) -> None:
    store = database.campaigns
    camp = await store.create("org-a", _spec())
    # An upload that died after claiming its batch and writing rows, before committing.
    await _collection(CAMPAIGN_BATCHES).insert_one(
        {
            "_id": f"{camp.id}:1",
            "campaign_id": camp.id,
            "b": 1,
            "first_n": 1,
            "count": 2,
            "chunks": 1,
            "committed": False,
        }
    )
    await _collection(CAMPAIGN_ROWS).insert_one(
        {"_id": f"{camp.id}:1:1", "rows": '[["+15550000001",null,[]],["+15550000002",null,[]]]'}
    )
    assert (await store.get("org-a", camp.id)).contact_count == 0
    assert await store.all_contacts(camp.id) == []
    assert await store.add_contacts(camp.id, _contacts(2, start=7)) == 2
    contacts = await store.all_contacts(camp.id)
    assert [(c.n, c.to_number) for c in contacts] == [(3, "+15550000007"), (4, "+15550000008")]
    assert (await store.counts(camp.id)).total == 2


async def test_racing_uploads_take_distinct_places(database: Database) -> None:
    store = database.campaigns
    camp = await store.create("org-a", _spec())
    added = await asyncio.gather(
        *(store.add_contacts(camp.id, _contacts(5, start=100 * k)) for k in range(4))
    )
    assert added == [5, 5, 5, 5]
    contacts = await store.all_contacts(camp.id)
    assert [c.n for c in contacts] == list(range(1, 21))
    assert len({c.to_number for c in contacts}) == 20


async def test_claims_of_attempts_and_terms_are_won_once(database: Database) -> None:
    store = database.campaigns
    camp = await store.create("org-a", _spec())
    won = await asyncio.gather(
        store.claim_attempt(camp.id, 1, 1, gateway_id="gw-a", at=T0),
        store.claim_attempt(camp.id, 1, 1, gateway_id="gw-b", at=T0),
    )
    assert sorted(won) == [False, True]
    attempt = await store.attempt(camp.id, 1, 1)
    assert attempt is not None and attempt.call_id is None and attempt.claimed_at == T0
    assert attempt.gateway_id == ("gw-a" if won[0] else "gw-b")
    await store.set_attempt_call(camp.id, 1, 1, "call-1")
    again = await store.attempt(camp.id, 1, 1)
    assert again is not None and again.call_id == "call-1"
    assert await store.attempt(camp.id, 1, 2) is None
    assert await store.claim_attempt(camp.id, 1, 2, gateway_id="gw-a", at=T0)

    assert await store.current_term(camp.id) == (0, None)
    terms = await asyncio.gather(
        store.claim_term(camp.id, 1, gateway_id="gw-a", at=T0),
        store.claim_term(camp.id, 1, gateway_id="gw-b", at=T0),
    )
    assert sorted(terms) == [False, True]
    assert await store.claim_term(camp.id, 2, gateway_id="gw-b", at=T0)
    assert await store.current_term(camp.id) == (2, "gw-b")


async def test_do_not_call_is_per_organisation(database: Database) -> None:
    dnc = database.do_not_call
    assert await dnc.add("org-a", ["+15550000002", "+15550000001", "+15550000001"]) == 2
    assert await dnc.add("org-a", ["+15550000001", "+15550000003"]) == 1
    assert await dnc.add("org-b", ["+15550000001"]) == 1
    assert await dnc.blocked("org-a", "+15550000003")
    assert not await dnc.blocked("org-b", "+15550000003")
    assert await dnc.list("org-a", limit=2) == ["+15550000001", "+15550000002"]
    assert await dnc.list("org-a", after="+15550000002") == ["+15550000003"]
    assert await dnc.remove("org-a", "+15550000003")
    assert not await dnc.remove("org-a", "+15550000003")
    assert not await dnc.blocked("org-a", "+15550000003")
    assert await dnc.list("org-b") == ["+15550000001"]


async def test_an_organisations_call_caps_round_trip(database: Database) -> None:
    accounts = database.accounts
    org = await accounts.ensure_organization("capped")
    assert org.max_concurrent_calls is None and org.inbound_reserved_calls == 0
    capped = await accounts.set_call_caps(org.id, max_concurrent_calls=10, inbound_reserved_calls=2)
    assert (capped.max_concurrent_calls, capped.inbound_reserved_calls) == (10, 2)
    assert (await accounts.get_organization(org.id)).max_concurrent_calls == 10
    cleared = await accounts.set_call_caps(
        org.id, max_concurrent_calls=None, inbound_reserved_calls=0
    )
    assert cleared.max_concurrent_calls is None


async def test_contacts_of_an_upload_committed_late_are_found(database: Database) -> None:
    store = database.campaigns
    camp = await store.create("org-a", _spec())
    # Upload 1 (n 1, 2) still writing when upload 2 (n 3) commits.
    await _collection(CAMPAIGN_BATCHES).insert_one(
        {"_id": f"{camp.id}:1", "campaign_id": camp.id, "b": 1, "first_n": 1, "count": 2,
         "chunks": 1, "chunk_rows": [2], "committed": False}
    )  # fmt: skip
    await _collection(CAMPAIGN_ROWS).insert_one(
        {"_id": f"{camp.id}:1:1", "rows": '[["+15550000001",null,[]],["+15550000002",null,[]]]'}
    )
    assert await store.add_contacts(camp.id, _contacts(1, start=9)) == 1
    first = await store.contacts_missing(camp.id, set())
    assert [c.n for c in first] == [3]
    await _collection(CAMPAIGN_BATCHES).update_one(
        {"_id": f"{camp.id}:1"}, {"$set": {"committed": True}}
    )
    late = await store.contacts_missing(camp.id, {3})
    assert [(c.n, c.to_number) for c in late] == [(1, "+15550000001"), (2, "+15550000002")]
    assert await store.contacts_missing(camp.id, {1, 2, 3}) == []


async def test_a_committed_upload_keeps_its_rows_whatever_its_reply(database: Database) -> None:
    store = database.campaigns
    camp = await store.create("org-a", _spec())
    assert await store.add_contacts(camp.id, _contacts(3)) == 3
    # The commit landed but its reply was lost: the clean-up must not drop the rows.
    assert await store._drop_rows(camp.id, 1, 1) is True
    assert [c.n for c in await store.all_contacts(camp.id)] == [1, 2, 3]


async def test_cancel_wins_over_a_racing_pause_or_completion(database: Database) -> None:
    store = database.campaigns
    camp = await store.create("org-a", _spec())
    await store.set_state("org-a", camp.id, CampaignState.CANCELLED)
    # A pause that read `active` before the cancel writes last.
    await _collection(CAMPAIGNS).update_one({"_id": camp.id}, {"$set": {"state": "paused"}})
    assert (await store.get("org-a", camp.id)).state == CampaignState.CANCELLED
    with pytest.raises(CampaignStateConflict):
        await store.set_state("org-a", camp.id, CampaignState.ACTIVE)
    # A completion racing it the same way.
    await _collection(CAMPAIGNS).update_one({"_id": camp.id}, {"$set": {"state": "active"}})
    assert camp.id not in {c.id for c in await store.active()}
    await store.mark_completed(camp.id, at=T0)
    got = await store.get_any(camp.id)
    assert got is not None and got.state == CampaignState.CANCELLED
    assert [c.state for c in await store.list("org-a")] == [CampaignState.CANCELLED]


async def test_racing_uploads_never_add_a_number_twice(database: Database) -> None:
    store = database.campaigns
    for round_ in range(3):
        camp = await store.create("org-a", _spec(f"race {round_}"))
        results = await asyncio.gather(
            store.add_contacts(camp.id, _contacts(5)),
            store.add_contacts(camp.id, _contacts(5, start=3)),  # numbers 3, 4 in both
            return_exceptions=True,
        )
        assert any(isinstance(r, ContactsRaced) for r in results), results
        assert all(isinstance(r, ContactsRaced) or r == 5 for r in results), results
        numbers = [c.to_number for c in await store.all_contacts(camp.id)]
        assert len(numbers) == len(set(numbers))
        # Nothing of a raced upload stays in the way: sent again, it is judged afresh.
        again = await store.add_contacts(camp.id, _contacts(2, start=50))
        assert again == 2


async def test_released_terms_and_attempts(database: Database) -> None:
    store = database.campaigns
    camp = await store.create("org-a", _spec())
    assert await store.claim_term(camp.id, 1, gateway_id="gw-a", at=T0)
    await store.release_term(camp.id, 1)
    assert await store.current_term(camp.id) == (1, None)
    assert await store.claim_attempt(camp.id, 1, 1, gateway_id="gw-a", at=T0)
    await store.release_attempt(camp.id, 1, 1)
    assert await store.attempt(camp.id, 1, 1) is None
    assert await store.claim_attempt(camp.id, 1, 1, gateway_id="gw-b", at=T0)
