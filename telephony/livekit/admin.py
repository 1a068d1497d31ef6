"""LiveKit's SIP, room and egress APIs through `livekit-api` (Twirp over HTTP): trunks,
dispatch rules, rooms, dialling out with `CreateSIPParticipant`, starting and stopping
egress, and the tokens the gateway joins rooms with.

Callers hand this adapter plain values and get LiveKit ids back (egress requests are the
exception: `gateway.livekit.egress` builds and reads those messages). Every failure
becomes `LiveKitError`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeVar

import aiohttp
from livekit import api
from livekit.protocol import sip

from telephony.errors import LiveKitError

log = logging.getLogger(__name__)

SipTransport = Literal["auto", "udp", "tcp", "tls"]
TrunkKind = Literal["inbound", "outbound"]
_TRANSPORTS = {
    "auto": sip.SIPTransport.SIP_TRANSPORT_AUTO,
    "udp": sip.SIPTransport.SIP_TRANSPORT_UDP,
    "tcp": sip.SIPTransport.SIP_TRANSPORT_TCP,
    "tls": sip.SIPTransport.SIP_TRANSPORT_TLS,
}
_ERRORS = (api.TwirpError, aiohttp.ClientError, TimeoutError)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DialedParticipant:
    participant_id: str
    participant_identity: str
    room_name: str
    sip_call_id: str


@dataclass(frozen=True, slots=True)
class SipTrunk:
    """A trunk to create: `address` and `transport` for outbound trunks, the allow-lists for
    inbound ones; empty values are left unset in LiveKit."""

    name: str
    numbers: Sequence[str]
    address: str = ""
    transport: SipTransport = "auto"
    allowed_addresses: Sequence[str] = ()
    allowed_numbers: Sequence[str] = ()
    auth_username: str | None = None
    auth_password: str | None = None
    metadata: str = ""


class LiveKitAdmin:
    """One LiveKit project's SIP, room and egress services (make inside a running loop)."""

    def __init__(self, *, url: str, api_key: str, api_secret: str, timeout_s: float = 10.0):
        self._url, self._key, self._secret = url, api_key, api_secret
        self._api = api.LiveKitAPI(
            url, api_key, api_secret, timeout=aiohttp.ClientTimeout(total=timeout_s)
        )

    async def aclose(self) -> None:
        await self._api.aclose()

    async def _request(
        self, what: str, request: Awaitable[T], *, gone_ok: Sequence[str] = ()
    ) -> T | None:
        """`request`'s answer; None when LiveKit answers with one of the `gone_ok` codes
        (what was to be removed is gone already). Anything else raises `LiveKitError`."""
        try:
            return await request
        except _ERRORS as exc:
            if isinstance(exc, api.TwirpError):
                if exc.code in gone_ok:
                    log.info("LiveKit: nothing left for %s", what, extra={"code": exc.code})
                    return None
                log.warning("LiveKit refused %s: %s", what, exc.message, extra={"code": exc.code})
                raise LiveKitError(
                    f"LiveKit refused {what}: {exc.message}", status=exc.status, code=exc.code
                ) from exc
            log.warning("LiveKit unreachable for %s: %r", what, exc)
            raise LiveKitError(f"LiveKit is unreachable ({what}): {exc!r}") from exc

    async def create_trunk(self, kind: TrunkKind, trunk: SipTrunk) -> str:
        """Create an inbound or outbound trunk; returns its LiveKit id (`ST_...`)."""
        username, password = trunk.auth_username or "", trunk.auth_password or ""
        if kind == "inbound":
            inbound = sip.SIPInboundTrunkInfo(
                name=trunk.name,
                numbers=list(trunk.numbers),
                allowed_addresses=list(trunk.allowed_addresses),
                allowed_numbers=list(trunk.allowed_numbers),
                auth_username=username,
                auth_password=password,
                metadata=trunk.metadata,
            )
            request = self._api.sip.create_inbound_trunk(
                sip.CreateSIPInboundTrunkRequest(trunk=inbound)
            )
            created = await self._request("the inbound trunk", request)
            assert created is not None
            return str(created.sip_trunk_id)
        outbound = sip.SIPOutboundTrunkInfo(
            name=trunk.name,
            address=trunk.address,
            numbers=list(trunk.numbers),
            transport=_TRANSPORTS[trunk.transport],
            auth_username=username,
            auth_password=password,
            metadata=trunk.metadata,
        )
        request_out = self._api.sip.create_outbound_trunk(
            sip.CreateSIPOutboundTrunkRequest(trunk=outbound)
        )
        made = await self._request("the outbound trunk", request_out)
        assert made is not None
        return str(made.sip_trunk_id)

    async def delete_trunk(self, livekit_id: str) -> None:
        """Delete a trunk (one already gone is left as it is)."""
        await self._request(
            "deleting the trunk",
            self._api.sip.delete_trunk(sip.DeleteSIPTrunkRequest(sip_trunk_id=livekit_id)),
            gone_ok=("not_found",),
        )

    async def create_dispatch_rule(
        self,
        *,
        name: str,
        trunk_ids: Sequence[str],
        room_prefix: str | None = None,
        room_name: str | None = None,
        pin: str | None = None,
        attributes: Mapping[str, str] | None = None,
        metadata: str = "",
    ) -> str:
        """A rule sending each call to its own room (`room_prefix`) or all to `room_name`."""
        if room_name is not None:
            rule = sip.SIPDispatchRule(
                dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=room_name, pin=pin or "")
            )
        else:
            rule = sip.SIPDispatchRule(
                dispatch_rule_individual=sip.SIPDispatchRuleIndividual(
                    room_prefix=room_prefix or "call-", pin=pin or ""
                )
            )
        info = sip.SIPDispatchRuleInfo(
            name=name,
            trunk_ids=list(trunk_ids),
            rule=rule,
            attributes=dict(attributes or {}),
            metadata=metadata,
        )
        created = await self._request(
            "the dispatch rule",
            self._api.sip.create_dispatch_rule(
                sip.CreateSIPDispatchRuleRequest(dispatch_rule=info)
            ),
        )
        assert created is not None
        return str(created.sip_dispatch_rule_id)

    async def delete_dispatch_rule(self, livekit_id: str) -> None:
        """Delete a dispatch rule (one already gone is left as it is)."""
        await self._request(
            "deleting the dispatch rule",
            self._api.sip.delete_dispatch_rule(
                sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=livekit_id)
            ),
            gone_ok=("not_found",),
        )

    async def create_room(self, name: str, *, empty_timeout_s: int = 60) -> None:
        await self._request(
            "creating the room",
            self._api.room.create_room(
                api.CreateRoomRequest(name=name, empty_timeout=empty_timeout_s)
            ),
        )

    async def delete_room(self, name: str) -> None:
        """Close a room (one already closed is left as it is)."""
        await self._request(
            "deleting the room",
            self._api.room.delete_room(api.DeleteRoomRequest(room=name)),
            gone_ok=("not_found",),
        )

    async def dial(
        self,
        *,
        trunk_id: str,
        to_number: str,
        from_number: str | None,
        room_name: str,
        identity: str,
        attributes: Mapping[str, str] | None = None,
        ring_timeout_s: int = 60,
    ) -> DialedParticipant:
        """Dial `to_number` through an outbound trunk into `room_name` (returns at once)."""
        request = sip.CreateSIPParticipantRequest(
            sip_trunk_id=trunk_id,
            sip_call_to=to_number,
            sip_number=from_number or "",
            room_name=room_name,
            participant_identity=identity,
            participant_name=to_number,
            participant_attributes=dict(attributes or {}),
            wait_until_answered=False,
        )
        request.ringing_timeout.FromSeconds(ring_timeout_s)
        info = await self._request("dialling out", self._api.sip.create_sip_participant(request))
        assert info is not None
        return DialedParticipant(
            participant_id=str(info.participant_id),
            participant_identity=str(info.participant_identity),
            room_name=str(info.room_name),
            sip_call_id=str(info.sip_call_id),
        )

    async def remove_participant(self, room_name: str, identity: str) -> None:
        """Take a participant out of a room (for a SIP participant: hang its call up)."""
        await self._request(
            "removing the participant",
            self._api.room.remove_participant(
                api.RoomParticipantIdentity(room=room_name, identity=identity)
            ),
            gone_ok=("not_found",),
        )

    async def transfer_sip(self, room_name: str, identity: str, to: str) -> None:
        """SIP REFER the participant's call to `to` (a number or SIP URI)."""
        target = to if to.startswith(("sip:", "tel:")) else f"tel:{to}"
        await self._request(
            "transferring the call",
            self._api.sip.transfer_sip_participant(
                sip.TransferSIPParticipantRequest(
                    room_name=room_name, participant_identity=identity, transfer_to=target
                )
            ),
        )

    async def start_room_composite_egress(
        self, request: api.RoomCompositeEgressRequest
    ) -> api.EgressInfo:
        """Ask LiveKit Egress to record a room (`gateway.livekit.egress` builds the request).

        Without an egress worker, livekit-server answers 503 `unavailable` ("no response from
        servers") only after ~23 s, so callers bound this with their own timeout."""
        info = await self._request(
            "starting the egress", self._api.egress.start_room_composite_egress(request)
        )
        assert info is not None
        return info

    async def stop_egress(self, egress_id: str) -> None:
        """Stop an egress; one that already ended or never existed is left as it is."""
        await self._request(
            "stopping the egress",
            self._api.egress.stop_egress(api.StopEgressRequest(egress_id=egress_id)),
            gone_ok=("not_found", "failed_precondition"),
        )

    def agent_token(self, room_name: str, identity: str) -> str:
        """A token for the gateway to join `room_name` as the agent."""
        grants = api.VideoGrants(
            room_join=True, room=room_name, can_publish=True, can_subscribe=True
        )
        return (
            api.AccessToken(self._key, self._secret)
            .with_identity(identity)
            .with_kind("agent")
            .with_grants(grants)
            .to_jwt()
        )

    def caller_token(self, room_name: str, identity: str, *, ttl_s: int) -> str:
        """A token for a browser caller: join `room_name` only (no other room, no admin,
        create or list), publish its microphone only, subscribe, no data; valid `ttl_s`
        seconds to join (LiveKit checks it when the participant connects)."""
        grants = api.VideoGrants(
            room_join=True,
            room=room_name,
            can_publish=True,
            can_publish_sources=["microphone"],
            can_subscribe=True,
            can_publish_data=False,
            can_update_own_metadata=False,
        )
        return (
            api.AccessToken(self._key, self._secret)
            .with_identity(identity)
            .with_kind("standard")
            .with_ttl(timedelta(seconds=ttl_s))
            .with_grants(grants)
            .to_jwt()
        )

    def token_verifier(self) -> api.TokenVerifier:
        """Verifies tokens LiveKit signs with this project's key (its webhooks)."""
        return api.TokenVerifier(self._key, self._secret)

    @property
    def ws_url(self) -> str:
        """The server's URL for room connections (http -> ws, https -> wss)."""
        return self._url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
