"""Twilio calls: the voice and status webhooks (`routes`), the media stream driver (`stream`),
its pacer (`pacer`) and placing outbound calls (`outbound`). The protocol, TwiML,
signatures and REST client are `telephony.twilio`."""
