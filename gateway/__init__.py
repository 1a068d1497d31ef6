"""The ASGI gateway: the call core (`call`), one package per carrier (`twilio`, `livekit`), the
management API (`api`), recordings, providers and the demo; settings, errors, logs and
metrics at its root, and every service built once in `services`."""
