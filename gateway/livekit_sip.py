"""LiveKit's SIP, room and egress APIs through `livekit-api` (Twirp over HTTP): trunks,
dispatch rules, rooms, dialling out with `CreateSIPParticipant`, starting/stopping egress.

The routes hand this adapter plain values and get LiveKit ids back (egress requests are
the exception: `livekit_egress` builds and reads those messages). Server errors become
`LiveKitError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import aiohttp
from livekit import api
from livekit.protocol import sip

from gateway.errors import GatewayError
from gateway.settings import Settings

log = logging.getLogger(__name__)

SipTransport = Literal["auto", "udp", "tcp", "tls"]
_TRANSPORTS = {
    "auto": sip.SIPTransport.SIP_TRANSPORT_AUTO,
    "udp": sip.SIPTransport.SIP_TRANSPORT_UDP,
    "tcp": sip.SIPTransport.SIP_TRANSPORT_TCP,
    "tls": sip.SIPTransport.SIP_TRANSPORT_TLS,
}


_ERRORS = (api.TwirpError, aiohttp.ClientError, TimeoutError)


def _code(exc: Exception) -> str:
    return exc.code if isinstance(exc, api.TwirpError) else ""


class LiveKitError(GatewayError):
    """LiveKit refused or could not serve a request; `status` is its HTTP status."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class LiveKitNotConfigured(GatewayError):
    """LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET are not all set."""


@dataclass(frozen=True, slots=True)
class DialedParticipant:
    participant_id: str
    participant_identity: str
    room_name: str
    sip_call_id: str


def livekit_sip(settings: Settings) -> LiveKitSip | None:
    """The adapter when LiveKit is configured, else None (the SIP routes then answer 503)."""
    if not (settings.livekit_url and settings.livekit_api_key and settings.livekit_api_secret):
        return None
    return LiveKitSip(
        url=settings.livekit_url,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret.get_secret_value(),
    )


class LiveKitSip:
    """One LiveKit project's SIP service and room service (make inside a running loop)."""

    def __init__(self, *, url: str, api_key: str, api_secret: str, timeout_s: float = 10.0):
        self._url, self._key, self._secret = url, api_key, api_secret
        self._api = api.LiveKitAPI(
            url, api_key, api_secret, timeout=aiohttp.ClientTimeout(total=timeout_s)
        )

    async def aclose(self) -> None:
        await self._api.aclose()

    @staticmethod
    def _error(what: str, exc: Exception) -> LiveKitError:
        if isinstance(exc, api.TwirpError):
            log.warning("LiveKit refused %s: %s", what, exc.message, extra={"code": exc.code})
            return LiveKitError(
                f"LiveKit refused {what}: {exc.message}", status=exc.status, code=exc.code
            )
        log.warning("LiveKit unreachable for %s: %r", what, exc)
        return LiveKitError(f"LiveKit is unreachable ({what}): {exc!r}", status=None)

    async def create_inbound_trunk(
        self,
        *,
        name: str,
        numbers: Sequence[str],
        allowed_addresses: Sequence[str] = (),
        allowed_numbers: Sequence[str] = (),
        auth_username: str | None = None,
        auth_password: str | None = None,
        metadata: str = "",
    ) -> str:
        """Create an inbound trunk; returns its LiveKit id (`ST_...`)."""
        info = sip.SIPInboundTrunkInfo(
            name=name,
            numbers=list(numbers),
            allowed_addresses=list(allowed_addresses),
            allowed_numbers=list(allowed_numbers),
            auth_username=auth_username or "",
            auth_password=auth_password or "",
            metadata=metadata,
        )
        try:
            created = await self._api.sip.create_inbound_trunk(
                sip.CreateSIPInboundTrunkRequest(trunk=info)
            )
        except _ERRORS as exc:
            raise self._error("the inbound trunk", exc) from exc
        return str(created.sip_trunk_id)

    async def create_outbound_trunk(
        self,
        *,
        name: str,
        address: str,
        numbers: Sequence[str],
        transport: SipTransport = "auto",
        auth_username: str | None = None,
        auth_password: str | None = None,
        metadata: str = "",
    ) -> str:
        """Create an outbound trunk towards `address`; returns its LiveKit id."""
        info = sip.SIPOutboundTrunkInfo(
            name=name,
            address=address,
            numbers=list(numbers),
            transport=_TRANSPORTS[transport],
            auth_username=auth_username or "",
            auth_password=auth_password or "",
            metadata=metadata,
        )
        try:
            created = await self._api.sip.create_outbound_trunk(
                sip.CreateSIPOutboundTrunkRequest(trunk=info)
            )
        except _ERRORS as exc:
            raise self._error("the outbound trunk", exc) from exc
        return str(created.sip_trunk_id)

    async def delete_trunk(self, livekit_id: str) -> None:
        try:
            await self._api.sip.delete_trunk(sip.DeleteSIPTrunkRequest(sip_trunk_id=livekit_id))
        except _ERRORS as exc:
            if _code(exc) == "not_found":
                log.info("trunk already gone from LiveKit", extra={"trunk": livekit_id})
                return
            raise self._error("deleting the trunk", exc) from exc

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
        try:
            created = await self._api.sip.create_dispatch_rule(
                sip.CreateSIPDispatchRuleRequest(dispatch_rule=info)
            )
        except _ERRORS as exc:
            raise self._error("the dispatch rule", exc) from exc
        return str(created.sip_dispatch_rule_id)

    async def delete_dispatch_rule(self, livekit_id: str) -> None:
        try:
            await self._api.sip.delete_dispatch_rule(
                sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=livekit_id)
            )
        except _ERRORS as exc:
            if _code(exc) == "not_found":
                log.info("dispatch rule already gone from LiveKit", extra={"rule": livekit_id})
                return
            raise self._error("deleting the dispatch rule", exc) from exc

    async def inbound_trunk_ids(self) -> list[str]:
        """Ids of every inbound trunk LiveKit has (for checks and reconciliation)."""
        try:
            listed = await self._api.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
        except _ERRORS as exc:
            raise self._error("listing inbound trunks", exc) from exc
        return [str(t.sip_trunk_id) for t in listed.items]

    async def inbound_trunk_password(self, livekit_id: str) -> str:
        """The password LiveKit holds for an inbound trunk (tests check it arrived)."""
        try:
            listed = await self._api.sip.list_inbound_trunk(
                sip.ListSIPInboundTrunkRequest(trunk_ids=[livekit_id])
            )
        except _ERRORS as exc:
            raise self._error("listing inbound trunks", exc) from exc
        return str(listed.items[0].auth_password) if listed.items else ""

    async def dispatch_rule_ids(self) -> list[str]:
        try:
            listed = await self._api.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
        except _ERRORS as exc:
            raise self._error("listing dispatch rules", exc) from exc
        return [str(r.sip_dispatch_rule_id) for r in listed.items]

    async def create_room(self, name: str, *, empty_timeout_s: int = 60) -> None:
        try:
            await self._api.room.create_room(
                api.CreateRoomRequest(name=name, empty_timeout=empty_timeout_s)
            )
        except _ERRORS as exc:
            raise self._error("creating the room", exc) from exc

    async def delete_room(self, name: str) -> None:
        try:
            await self._api.room.delete_room(api.DeleteRoomRequest(room=name))
        except _ERRORS as exc:
            if _code(exc) != "not_found":
                raise self._error("deleting the room", exc) from exc

    async def room_names(self) -> list[str]:
        try:
            listed = await self._api.room.list_rooms(api.ListRoomsRequest())
        except _ERRORS as exc:
            raise self._error("listing rooms", exc) from exc
        return [str(r.name) for r in listed.rooms]

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
        try:
            info = await self._api.sip.create_sip_participant(request)
        except _ERRORS as exc:
            raise self._error("dialling out", exc) from exc
        return DialedParticipant(
            participant_id=str(info.participant_id),
            participant_identity=str(info.participant_identity),
            room_name=str(info.room_name),
            sip_call_id=str(info.sip_call_id),
        )

    async def remove_participant(self, room_name: str, identity: str) -> None:
        """Take a participant out of a room (for a SIP participant: hang its call up)."""
        try:
            await self._api.room.remove_participant(
                api.RoomParticipantIdentity(room=room_name, identity=identity)
            )
        except _ERRORS as exc:
            if _code(exc) != "not_found":
                raise self._error("removing the participant", exc) from exc

    async def transfer_sip(self, room_name: str, identity: str, to: str) -> None:
        """SIP REFER the participant's call to `to` (a number or SIP URI)."""
        target = to if to.startswith(("sip:", "tel:")) else f"tel:{to}"
        try:
            await self._api.sip.transfer_sip_participant(
                sip.TransferSIPParticipantRequest(
                    room_name=room_name, participant_identity=identity, transfer_to=target
                )
            )
        except _ERRORS as exc:
            raise self._error("transferring the call", exc) from exc

    async def start_room_composite_egress(
        self, request: api.RoomCompositeEgressRequest
    ) -> api.EgressInfo:
        """Ask LiveKit Egress to record a room (`livekit_egress` builds the request).

        Without an egress worker, livekit-server answers 503 `unavailable` ("no response from
        servers") only after ~23 s, so callers bound this with their own timeout."""
        try:
            return await self._api.egress.start_room_composite_egress(request)
        except _ERRORS as exc:
            raise self._error("starting the egress", exc) from exc

    async def stop_egress(self, egress_id: str) -> None:
        """Stop an egress; one that already ended or never existed is left as it is."""
        try:
            await self._api.egress.stop_egress(api.StopEgressRequest(egress_id=egress_id))
        except _ERRORS as exc:
            if _code(exc) in ("not_found", "failed_precondition"):
                log.info("egress already ended", extra={"egress_id": egress_id})
                return
            raise self._error("stopping the egress", exc) from exc

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

    def token_verifier(self) -> api.TokenVerifier:
        """Verifies tokens LiveKit signs with this project's key (its webhooks)."""
        return api.TokenVerifier(self._key, self._secret)

    @property
    def ws_url(self) -> str:
        """The server's URL for room connections (http -> ws, https -> wss)."""
        return self._url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
