"""Webhook signing secrets on the real database: rotations, their grace periods, and
rotations racing each other (as two gateways would)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from storage import Database, SecretRotationRaced

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


async def test_a_replaced_secret_signs_only_within_its_grace_period(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    webhooks = database.webhooks
    first = await webhooks.webhook_secret(org.id)
    assert await webhooks.signing_secrets(org.id, now=T0, grace_s=60) == (first,)

    second = await webhooks.rotate_webhook_secret(org.id, now=T0)
    assert second != first and await webhooks.webhook_secret(org.id) == second
    at = T0 + timedelta(seconds=10)
    assert await webhooks.signing_secrets(org.id, now=at, grace_s=60) == (second, first)
    at = T0 + timedelta(seconds=61)
    assert await webhooks.signing_secrets(org.id, now=at, grace_s=60) == (second,)

    third = await webhooks.rotate_webhook_secret(org.id, now=T0 + timedelta(seconds=30))
    at = T0 + timedelta(seconds=40)
    assert await webhooks.signing_secrets(org.id, now=at, grace_s=60) == (third, second, first)
    at = T0 + timedelta(seconds=89)
    assert await webhooks.signing_secrets(org.id, now=at, grace_s=60) == (third, second)
    at = T0 + timedelta(seconds=91)
    assert await webhooks.signing_secrets(org.id, now=at, grace_s=60) == (third,)
    assert await webhooks.signing_secrets(org.id, now=at, grace_s=0) == (third,)

    other = await database.accounts.ensure_organization("globex")
    assert await webhooks.webhook_secret(other.id) not in (first, second, third)


async def test_rotations_at_once_never_leave_two_current_secrets(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    webhooks = database.webhooks
    first = await webhooks.webhook_secret(org.id)
    outcomes = await asyncio.gather(
        *(webhooks.rotate_webhook_secret(org.id, now=T0) for _ in range(6)),
        return_exceptions=True,
    )
    made = [o for o in outcomes if isinstance(o, str)]
    raced = [o for o in outcomes if isinstance(o, SecretRotationRaced)]
    assert len(made) + len(raced) == 6 and made
    current = await webhooks.webhook_secret(org.id)
    assert current in made
    # Every secret a rotation returned signs (current first) and none was overwritten.
    signing = await webhooks.signing_secrets(org.id, now=T0, grace_s=60)
    assert signing[0] == current
    assert sorted(signing) == sorted([*made, first])
