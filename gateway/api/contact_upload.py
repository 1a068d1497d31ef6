"""Reading and checking a campaign's contact upload, row by row, before anything is stored.

Two forms: a JSON array `[{to_number, metadata?, time_zone?}]` (rows counted from 0, as
its indexes), or a `text/csv` body in UTF-8 (a header row naming `to_number`; an optional
`time_zone` column; every other column a metadata variable; rows counted as the CSV's
lines, the header being line 1). Each row is checked on its own (an E.164 number, spaces,
dots, dashes and brackets dropped; a known time zone; metadata within the call bounds and
filling every `{{placeholder}}` of the assistant; no number twice, in the upload or in the
campaign) and every rejected row is reported: a caller stores the rows only if none was.

Pure: no I/O; the caller passes what the campaign already holds.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.api.campaign_models import zone
from gateway.call.persona import filled_length, placeholders
from gateway.call.records import CallInputLimits
from gateway.errors import BadRequest, InputTooLarge, RequestInvalid
from storage import AssistantConfig, ContactInput, normalize_e164

# Filled by the call itself, never by a contact's metadata.
CALL_VALUES = frozenset({"from_number", "to_number"})
_JSON_FIELDS = frozenset({"to_number", "metadata", "time_zone"})
_SHOWN_CHARS = 40


@dataclass(frozen=True, slots=True)
class RawRow:
    """One row as read: `row` as the user counts it, `problem` if it could not be read."""

    row: int
    to_number: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    time_zone: str | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Checked:
    accepted: list[ContactInput]
    rejected: list[dict[str, Any]]  # [{row, reason, to_number?}], in row order
    total: int  # rows read


def required_placeholders(config: AssistantConfig) -> frozenset[str]:
    """The names a contact's metadata must fill: every `{{placeholder}}` of the assistant's
    prompt, greeting, idle lines and voicemail message (when it has one), but the numbers."""
    templates = [
        config.system_prompt,
        config.greeting,
        config.turn_taking.idle_reprompt,
        config.turn_taking.idle_goodbye,
    ]
    voicemail = getattr(config, "voicemail", None)  # issue 16's voicemail, where it exists
    message = getattr(voicemail, "message", None)
    if isinstance(message, str):
        templates.append(message)
    return frozenset(placeholders("\n".join(templates))) - CALL_VALUES


def read_csv(raw: bytes) -> Iterator[RawRow]:
    """The rows of a CSV body; `BadRequest` (400) for a body that is not UTF-8 or not CSV,
    `RequestInvalid` (422) for a header without `to_number` or with a column named twice or
    not named. Blank lines are skipped; a row whose fields do not match the header's is a
    rejected row."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            ["body"], f"the CSV is not UTF-8 (byte {exc.start}): save it as UTF-8"
        ) from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise RequestInvalid("the CSV is empty: it needs a header row naming to_number")
        names = [name.strip() for name in header]
        columns = _header(names)
        line = reader.line_num
        for record in reader:
            row, line = line + 1, reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(names):
                yield RawRow(
                    row,
                    problem=f"has {len(record)} fields, the header has {len(names)}",
                )
                continue
            yield _csv_row(row, names, columns, record)
    except csv.Error as exc:
        raise BadRequest(
            ["body"], f"the CSV is malformed at line {reader.line_num}: {exc}"
        ) from exc


def _header(names: list[str]) -> tuple[int, int | None, list[int]]:
    """The indexes of `to_number`, `time_zone` (None: no such column) and the metadata."""
    for i, name in enumerate(names):
        if not name:
            raise RequestInvalid(
                f"the CSV header's column {i + 1} has no name",
                [{"loc": ["body", "header", i + 1], "msg": "a column without a name"}],
            )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RequestInvalid(f"the CSV header names {', '.join(twice)} more than once")
    if "to_number" not in names:
        raise RequestInvalid(
            "the CSV header has no to_number column",
            [{"loc": ["body", "header"], "msg": "a column named to_number is required"}],
        )
    number_at = names.index("to_number")
    zone_at = names.index("time_zone") if "time_zone" in names else None
    metadata_at = [i for i in range(len(names)) if i not in (number_at, zone_at)]
    return number_at, zone_at, metadata_at


def _csv_row(
    row: int, names: list[str], columns: tuple[int, int | None, list[int]], record: list[str]
) -> RawRow:
    number_at, zone_at, metadata_at = columns
    # An empty cell is no value (a placeholder left blank is missing, not empty).
    metadata = {names[i]: record[i] for i in metadata_at if record[i] != ""}
    time_zone = record[zone_at].strip() if zone_at is not None else ""
    return RawRow(row, record[number_at], metadata, time_zone or None)


def read_json(raw: bytes) -> Iterator[RawRow]:
    """The rows of a JSON array body (`RequestInvalid` if it is not one); a row that is not
    `{to_number, metadata?, time_zone?}` with string values is a rejected row."""
    try:
        data = json.loads(raw or b"null")
    except RecursionError as exc:
        raise InputTooLarge(["body"], "the request body is nested too deeply") from exc
    except ValueError as exc:
        raise RequestInvalid("the request body is not JSON (or send text/csv)") from exc
    if not isinstance(data, list):
        raise RequestInvalid(
            "the body must be a JSON array of contacts [{to_number, metadata, time_zone}]",
            [{"loc": ["body"], "msg": "not an array"}],
        )
    for row, item in enumerate(data):
        yield _json_row(row, item)


def _json_row(row: int, item: object) -> RawRow:
    if not isinstance(item, dict):
        return RawRow(row, problem="not an object {to_number, metadata, time_zone}")
    unknown = sorted(str(k) for k in item if k not in _JSON_FIELDS)
    if unknown:
        return RawRow(row, problem=f"unknown field {unknown[0]!r} (metadata goes in metadata)")
    number, metadata, time_zone = item.get("to_number"), item.get("metadata"), item.get("time_zone")
    if not isinstance(number, str):
        return RawRow(row, problem="to_number is missing or not a string")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return RawRow(row, number, problem="metadata must be an object of string values")
    if time_zone is not None and not isinstance(time_zone, str):
        return RawRow(row, number, problem="time_zone must be a string")
    return RawRow(row, number, metadata, time_zone or None)


def check_rows(
    rows: Iterator[RawRow],
    *,
    required: frozenset[str],
    existing: set[str],
    limits: CallInputLimits,
    config: AssistantConfig,
    from_number: str,
) -> Checked:
    """Every row checked (see the module's docstring): the contacts to store and the report
    of those rejected."""
    accepted: list[ContactInput] = []
    rejected: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    total = 0
    for raw in rows:
        total += 1
        reasons: list[str] = []
        number = ""
        if raw.problem is not None:
            reasons.append(raw.problem)
        else:
            try:
                number = normalize_e164(raw.to_number)
            except ValueError:
                reasons.append(
                    f"to_number {raw.to_number[:_SHOWN_CHARS]!r} is not E.164 (+ and 7-15 digits)"
                )
            if raw.time_zone is not None and zone(raw.time_zone) is None:
                reasons.append(
                    f"time_zone {raw.time_zone[:_SHOWN_CHARS]!r} is not an IANA time zone"
                )
            reasons += _metadata_problems(
                raw.metadata, required, limits, config, from_number, number
            )
            if number:
                if number in seen:
                    reasons.append(f"{number} is also in row {seen[number]}")
                elif number in existing:
                    reasons.append(f"{number} is in the campaign already")
                else:
                    seen[number] = raw.row
        if reasons:
            entry: dict[str, Any] = {"row": raw.row, "reason": "; ".join(reasons)}
            if raw.to_number:
                entry["to_number"] = raw.to_number[:_SHOWN_CHARS]
            rejected.append(entry)
        elif not rejected:  # once one is rejected nothing is stored: stop collecting
            accepted.append(ContactInput(number, dict(raw.metadata), raw.time_zone))
    return Checked(accepted, rejected, total)


def _metadata_problems(
    metadata: Mapping[str, str],
    required: frozenset[str],
    limits: CallInputLimits,
    config: AssistantConfig,
    from_number: str,
    to_number: str,
) -> list[str]:
    missing = sorted(required - metadata.keys())
    if missing:
        return ["missing placeholder " + ", ".join(f"{{{{{name}}}}}" for name in missing)]
    chars = sum(len(k) + len(v) for k, v in metadata.items())
    # A UTF-8 character is at most 4 bytes: most rows are judged without encoding them.
    if len(metadata) > limits.metadata_max_keys or chars * 4 > limits.metadata_max_bytes:
        try:
            limits.check_metadata(metadata)
        except InputTooLarge as exc:
            return [str(exc)]
    if not required:
        return []
    longest = max(len(v) for v in (*metadata.values(), from_number, to_number))
    values = {**metadata, "from_number": from_number, "to_number": to_number}
    for what, template in (("system_prompt", config.system_prompt), ("greeting", config.greeting)):
        # No placeholder fills more than `longest`: most rows need no filling to know.
        if len(template) + template.count("{{") * longest <= limits.prompt_max_chars:
            continue
        length = filled_length(template, values)
        if length > limits.prompt_max_chars:
            most = limits.prompt_max_chars
            return [f"the {what} filled would be {length} characters (at most {most})"]
    return []
