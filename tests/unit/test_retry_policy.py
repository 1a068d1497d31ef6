"""The retry schedule and the outcome of a status code, without I/O."""

from __future__ import annotations

import pytest

from webhooks.outbox import RetryPolicy, outcome


def test_backoff_doubles_with_equal_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_s=10, cap_s=300, max_attempts=12)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (5, 160), (6, 300), (12, 300)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert max(delays) - min(delays) > ceiling / 10  # jittered, so retries spread


def test_a_huge_attempt_number_is_the_cap() -> None:
    policy = RetryPolicy(base_s=0.05, cap_s=2, max_attempts=100)
    assert 1 <= policy.delay(5000) <= 2


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (299, "delivered"),
        (400, "failed"),
        (401, "failed"),
        (410, "failed"),
        (408, None),  # request timeout: the receiver asks for a retry
        (429, None),  # too many requests: idem
        (500, None),
        (503, None),
        (302, None),  # redirects are not followed
        (None, None),  # no response at all
    ],
)
def test_outcome_of_a_status_code(code: int | None, expected: str | None) -> None:
    assert outcome(code) == expected
