"""What the model is asked after a call, and how its answer is read (pure: no I/O).

The model gets the plan as one instruction and the stored transcript, and answers one JSON
object: `summary` (with a summary prompt), `data` (with a JSON Schema), `success` and
`success_reason` (with success criteria). Reading it checks each requested part; the
structured data is validated against the plan's schema (JSON Schema draft 2020-12).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from gateway.providers.base import ChatMessage
from storage import AnalysisPlan, TurnRecord

_OMITTED = "[earlier turns left out]"


def transcript_text(turns: Sequence[TurnRecord], *, max_chars: int) -> str:
    """The transcript as lines `Agent: ...` / `Caller: ...`; over `max_chars`, the oldest
    turns are left out (the end of a call says how it went)."""
    lines = [
        f"{'Agent' if t.speaker == 'agent' else 'Caller'}: {t.text}"
        + (" (interrupted)" if t.interrupted else "")
        for t in turns
        if t.text.strip()
    ]
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        size += len(line) + 1
        if size > max_chars:
            kept.append(_OMITTED)
            break
        kept.append(line)
    return "\n".join(reversed(kept))


def analysis_messages(
    plan: AnalysisPlan, turns: Sequence[TurnRecord], *, max_chars: int
) -> list[ChatMessage]:
    """The request: the plan as the system message, the transcript as the user's."""
    keys: list[str] = []
    if plan.summary_prompt is not None:
        keys.append(f'- "summary": a string. {plan.summary_prompt}')
    if plan.structured_data_schema is not None:
        schema = json.dumps(plan.structured_data_schema, ensure_ascii=False)
        keys.append(f'- "data": a JSON value that matches this JSON Schema: {schema}')
    if plan.success_criteria is not None:
        keys.append(
            '- "success": true or false, whether the call met these criteria: '
            f'{plan.success_criteria}\n- "success_reason": one sentence saying why.'
        )
    system = (
        "You analyse a finished phone call between an AI agent and a caller, from its "
        "transcript. Answer with one JSON object and nothing else, with these keys:\n"
        + "\n".join(keys)
    )
    transcript = transcript_text(turns, max_chars=max_chars)
    return [
        ChatMessage("system", system),
        ChatMessage("user", f"The transcript of the call:\n{transcript}"),
    ]


@dataclass(frozen=True, slots=True)
class Reading:
    """One answer, read against the plan. `is_object`: it was a JSON object at all;
    `problems`: what the model is told on a retry (empty: the answer is complete), which may
    quote the answer's data (taken from the transcript); `faults`: the same problems said
    with JSON paths and schema keywords only, for the log."""

    is_object: bool
    summary: str | None = None
    data: Any = None
    data_error: str | None = None
    success: bool | None = None
    success_reason: str | None = None
    problems: tuple[str, ...] = field(default=())
    faults: tuple[str, ...] = field(default=())


def _schema_error(schema: dict[str, Any], data: Any) -> tuple[str, str] | None:
    """Why `data` does not match `schema`: the full message (it quotes the data) and the
    fault by path and keyword only (e.g. `at items/0: type`); None if it matches."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"at {where}: {error.message}"[:1000], f"at {where}: {error.validator}"[:300]


def read_answer(text: str, plan: AnalysisPlan) -> Reading:
    """Read the model's answer `text` against `plan`."""
    try:
        answer = json.loads(text)
    except (ValueError, RecursionError) as exc:
        problem = "the answer is not JSON"
        return Reading(is_object=False, problems=(f"{problem} ({exc})",), faults=(problem,))
    if not isinstance(answer, dict):
        problem = "the answer is not a JSON object"
        return Reading(is_object=False, problems=(problem,), faults=(problem,))
    problems: list[str] = []
    faults: list[str] = []  # the same, without the answer's content
    summary = answer.get("summary")
    if plan.summary_prompt is None:
        summary = None
    elif not isinstance(summary, str) or not summary.strip():
        problems.append('"summary" must be a non-empty string')
        faults.append(problems[-1])
        summary = None
    data: Any = None
    data_error: str | None = None
    if plan.structured_data_schema is not None:
        if "data" not in answer:
            data_error = '"data" is missing'
            faults.append(data_error)
        else:
            data = answer["data"]
            mismatch = _schema_error(plan.structured_data_schema, data)
            if mismatch is not None:
                data_error = mismatch[0]
                faults.append(f'"data" does not match the JSON Schema {mismatch[1]}')
        if data_error is not None:
            problems.append(f'"data" does not match the JSON Schema: {data_error}')
    success: bool | None = None
    reason: str | None = None
    if plan.success_criteria is not None:
        raw_success, raw_reason = answer.get("success"), answer.get("success_reason")
        if isinstance(raw_success, bool):
            success = raw_success
        else:
            problems.append('"success" must be true or false')
            faults.append(problems[-1])
        reason = raw_reason if isinstance(raw_reason, str) else None
    return Reading(
        is_object=True,
        summary=summary,
        data=data,
        data_error=data_error,
        success=success,
        success_reason=reason,
        problems=tuple(problems),
        faults=tuple(faults),
    )


def retry_message(reading: Reading) -> ChatMessage:
    """What the model is told after an answer with problems (its one retry)."""
    return ChatMessage(
        "user",
        "Your answer cannot be used: "
        + "; ".join(reading.problems)
        + ". Answer again with one JSON object that fixes this, and nothing else.",
    )
