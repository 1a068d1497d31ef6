"""No URL's password in an error, a log line or an API answer."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from gateway.errors import error_response
from gateway.logs import JsonFormatter, TextFormatter
from storage import redact_credentials, redact_url

PASSWORD = "hunter2-Sup3r"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("mongodb://admin:hunter2-Sup3r@db.internal:27017/?authSource=admin",
         "mongodb://admin:***@db.internal:27017/?authSource=admin"),
        ("cannot open MongoDB at mongodb+srv://u:hunter2-Sup3r@c0.x.mongodb.net/db: timed out",
         "cannot open MongoDB at mongodb+srv://u:***@c0.x.mongodb.net/db: timed out"),
        ("mongodb://u:hunter2-Sup3r@h1:27017,h2:27017/?replicaSet=rs0",
         "mongodb://u:***@h1:27017,h2:27017/?replicaSet=rs0"),
        ("redis://:hunter2-Sup3r@redis:6379/0", "redis://:***@redis:6379/0"),
        ("https://hooks.example.com/x?token=hunter2-Sup3r&b=2",
         "https://hooks.example.com/x?token=***&b=2"),
        ("mongodb://127.0.0.1:27017/ and bob@example.com", None),
        ("mongodb://%2Ftmp%2Fferretdb.sock/", None),
    ],
)  # fmt: skip
def test_passwords_in_urls_are_masked(text: str, shown: str | None) -> None:
    assert redact_credentials(text) == (shown or text)
    assert redact_url(text) == (shown or text)


def _record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"cannot reach mongodb://gw:{PASSWORD}@10.0.0.5/")
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("gateway.test", logging.ERROR, __file__, 1, msg, args, exc_info)
    record.call_id = None  # as the handler's filter sets it
    for key, value in extra.items():
        setattr(record, key, value)
    return record


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_no_log_line_carries_a_password(formatter: logging.Formatter) -> None:
    url = f"mongodb://gw:{PASSWORD}@10.0.0.5:27017/"
    lines = [
        formatter.format(_record("database at %s is away", url)),
        formatter.format(_record("lifespan failed", exc=True)),
        formatter.format(_record("opened %s", url, mongodb_url=url)),
    ]
    for line in lines:
        assert PASSWORD not in line and "gw:***@10.0.0.5" in line
    if isinstance(formatter, JsonFormatter):
        assert json.loads(lines[2])["mongodb_url"] == "mongodb://gw:***@10.0.0.5:27017/"


def test_no_error_answer_carries_a_password() -> None:
    answer = error_response(502, "carrier_error", f"POST https://ac:{PASSWORD}@api.example/ 500")
    body = json.loads(bytes(answer.body))
    assert PASSWORD not in answer.body.decode()
    assert body["error"]["message"] == "POST https://ac:***@api.example/ 500"


def test_a_log_line_quoting_json_that_quotes_a_signed_url_stays_valid_json() -> None:
    # A database driver's debug line quotes a stored event, which quotes a presigned URL.
    event = json.dumps({"url": "https://s3/k.wav?AWSAccessKeyId=k&Signature=ab%2B/c=&Expires=1"})
    line = json.dumps({"msg": json.dumps({"reply": event})})
    redacted = redact_credentials(line)
    inner = json.loads(json.loads(json.loads(redacted)["msg"])["reply"])
    assert inner["url"] == "https://s3/k.wav?AWSAccessKeyId=k&Signature=***&Expires=1"
