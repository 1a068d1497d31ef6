"""Assistants through the API: prompt and greeting with `{{placeholders}}`, providers,
voice, webhook URL and caller lookup URL (both checked by the SSRF guard), maximum duration,
recording, numbers (each registered to the organisation first: `gateway/api/numbers.py`),
post-call analysis plan (its JSON Schema checked when saved)."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from gateway.api.models import AssistantList, AssistantOut, AssistantPatch
from gateway.api.numbers import require_registered
from gateway.api.operations import ApiRequest, Operation
from gateway.errors import ConflictError, RequestInvalid
from storage import AssistantConfig
from webhooks.errors import UnsafeURL
from webhooks.ssrf import SsrfGuard


def require_safe_url(guard: SsrfGuard, url: str, *, field: str) -> None:
    """`RequestInvalid` (422 naming `field`) when the SSRF guard refuses `url` (no DNS:
    what it resolves to is checked again before each request)."""
    try:
        guard.check_literal(url)
    except UnsafeURL as exc:
        raise RequestInvalid(
            f"{field} refused: {exc}", [{"loc": ["body", field], "msg": str(exc)}]
        ) from exc


async def _check_config(req: ApiRequest, config: AssistantConfig, *, numbers: bool) -> None:
    """The webhook and caller lookup URLs pass the SSRF guard; every number is the
    organisation's (checked when the request sets them: a rename leaves alone a number the
    operator has yet to settle, which reaches no one meanwhile)."""
    if config.webhook_url:
        req.services.ssrf_guard.check_literal(config.webhook_url)
    if config.inbound_lookup_url:
        require_safe_url(
            req.services.ssrf_guard, config.inbound_lookup_url, field="inbound_lookup_url"
        )
    if numbers:
        await require_registered(
            req.services.database, req.principal.org_id, config.phone_numbers, field="phone_numbers"
        )


async def create_assistant(req: ApiRequest) -> BaseModel:
    config = req.body_as(AssistantConfig)
    await _check_config(req, config, numbers=True)
    assistants = req.services.database.assistants
    return AssistantOut.of(await assistants.create(req.principal.org_id, config))


async def list_assistants(req: ApiRequest) -> BaseModel:
    records = await req.services.database.assistants.list(req.principal.org_id)
    return AssistantList(items=[AssistantOut.of(r) for r in records])


async def get_assistant(req: ApiRequest) -> BaseModel:
    assistants = req.services.database.assistants
    return AssistantOut.of(await assistants.get(req.principal.org_id, req.path["assistant_id"]))


async def update_assistant(req: ApiRequest) -> BaseModel:
    org_id, assistant_id = req.principal.org_id, req.path["assistant_id"]
    assistants = req.services.database.assistants
    current = await assistants.get(org_id, assistant_id)
    changes = req.body_as(AssistantPatch).model_dump(exclude_unset=True)
    stored = current.config.model_dump()
    if changes.get("turn_taking") is not None:  # only the fields given (unset ones keep theirs)
        changes["turn_taking"] = {**stored["turn_taking"], **changes["turn_taking"]}
    if changes.get("analysis") is not None and stored["analysis"] is not None:
        changes["analysis"] = {**stored["analysis"], **changes["analysis"]}
    try:
        merged = AssistantConfig.model_validate({**stored, **changes})
    except ValidationError as exc:
        details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise RequestInvalid("invalid assistant fields", details) from exc
    await _check_config(req, merged, numbers="phone_numbers" in changes)
    return AssistantOut.of(await assistants.replace(org_id, assistant_id, merged))


async def delete_assistant(req: ApiRequest) -> None:
    org_id, assistant_id = req.principal.org_id, req.path["assistant_id"]
    db = req.services.database
    rules = [r.id for r in await db.sip.rules(org_id) if r.assistant_id == assistant_id]
    if rules:
        raise ConflictError("the assistant is used by dispatch rules: " + ", ".join(rules))
    await db.assistants.delete(org_id, assistant_id)


OPERATIONS = [
    Operation(
        "POST", "/assistants", create_assistant, "Create an assistant", "assistants",
        body=AssistantConfig, response=AssistantOut, status=201, errors=(401, 409, 422),
    ),
    Operation(
        "GET", "/assistants", list_assistants, "List assistants", "assistants",
        response=AssistantList, errors=(401,),
    ),
    Operation(
        "GET", "/assistants/{assistant_id}", get_assistant, "An assistant", "assistants",
        response=AssistantOut, errors=(401, 404),
    ),
    Operation(
        "PATCH", "/assistants/{assistant_id}", update_assistant, "Change an assistant",
        "assistants", body=AssistantPatch, response=AssistantOut, errors=(401, 404, 409, 422),
    ),
    Operation(
        "DELETE", "/assistants/{assistant_id}", delete_assistant, "Delete an assistant",
        "assistants", status=204, errors=(401, 404, 409),
    ),
]  # fmt: skip
