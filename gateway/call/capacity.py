"""An organisation's cap on live calls (`Organization.max_concurrent_calls`, inbound
included, with `inbound_reserved_calls` of it kept for inbound calls): how many outbound
calls it may start now.

Outbound calls (POST /call/outbound, campaigns) start only while the organisation's live
calls (`storage.live_calls`: inbound, and outbound from stored to finished, ringing
included) are below max - reserved. Inbound calls are never refused for the cap: the
reserve is there so that callers get through while campaigns run; an organisation over
its cap (inbound calls above the reserve) simply starts no outbound call until it is back
under. The check reads the count right before a call is stored (the campaign dialer
counts again at each attempt's slot, inside the lock that makes one process store its
campaign calls one at a time), so the cap is exceeded only by starts racing in the instant
between one gateway's count and its store: at most one campaign start per other gateway
storing a campaign call at that instant, plus the POST /call/outbound requests being
stored then (on any gateway, this one included); the excess ends as those calls end."""

from __future__ import annotations

from gateway.errors import OrganizationAtCapacity
from storage import AccountRepository, CallRepository, Organization


class OrganizationCapacity:
    """Reads an organisation's cap and live calls (two small reads per question)."""

    def __init__(
        self, *, accounts: AccountRepository, calls: CallRepository, retry_after_s: int
    ) -> None:
        self._accounts = accounts
        self._calls = calls
        self._retry_after_s = retry_after_s

    async def outbound_room(self, org_id: str | None) -> int | None:
        """How many more outbound calls the organisation may start now (None: no cap)."""
        if org_id is None:
            return None
        org = await self._accounts.get_organization(org_id)
        limit = outbound_limit(org)
        if limit is None:
            return None
        live = await self._calls.live_calls(org_id)
        return max(0, limit - live.total)

    async def require_outbound_room(self, org_id: str | None) -> None:
        """Raise `OrganizationAtCapacity` (429 + Retry-After) if there is no room."""
        room = await self.outbound_room(org_id)
        if room is not None and room <= 0:
            raise OrganizationAtCapacity(
                "the organisation's live calls are at its max_concurrent_calls "
                "(less inbound_reserved_calls): try again later",
                retry_after_s=self._retry_after_s,
            )


def outbound_limit(org: Organization) -> int | None:
    """The most live calls under which an outbound call may start (None: no cap)."""
    if org.max_concurrent_calls is None:
        return None
    return max(0, org.max_concurrent_calls - org.inbound_reserved_calls)
