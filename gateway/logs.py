"""Structured (JSON) logging; every record carries the call id of the task that logged it,
and no line carries a URL's password (masked by `storage.redact_credentials`)."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from storage import redact_credentials

call_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_id", default=None)

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class _CallIdFilter(logging.Filter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_id"):
            record.call_id = call_id_var.get()
        if self._worker is not None and not hasattr(record, "worker"):
            record.worker = self._worker  # which process of `serve --workers N` said it
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, call_id and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None)
        if call_id:
            out["call_id"] = call_id
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in out and key != "call_id":
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact_credentials(json.dumps(out, default=str))


class TextFormatter(logging.Formatter):
    """`time level logger [call id] message`, for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(call_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact_credentials(super().format(record))


def configure_logging(
    level: str = "INFO", *, json_format: bool = True, worker: int | None = None
) -> None:
    """Install the gateway's handler on the root logger (idempotent); `worker`, the index of
    a process of `serve --workers N`, is then on every record."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_voice_gateway", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._voice_gateway = True  # type: ignore[attr-defined]
    handler.addFilter(_CallIdFilter(worker))
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
