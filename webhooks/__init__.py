"""End-of-call events: signing, a durable outbox and delivery with retries (built on `storage`)."""
