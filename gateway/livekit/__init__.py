"""LiveKit room calls: the signed webhook (`webhook`), the room the gateway joins as the agent
(`room`), its audio transport (`transport`), Egress recordings (`egress`) and placing
outbound SIP calls (`outbound`). The APIs themselves are `telephony.livekit`."""
