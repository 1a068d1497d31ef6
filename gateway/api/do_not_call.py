"""The organisation's do-not-call list through the API: numbers its campaigns never dial
(the dialer checks the list before every attempt, so a number added mid-campaign is
skipped from then on)."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from gateway.api.campaign_models import DoNotCallAdd, DoNotCallAdded, DoNotCallPage, DoNotCallQuery
from gateway.api.operations import ApiRequest, Operation
from gateway.errors import RequestInvalid
from storage import NotFound, normalize_e164

log = logging.getLogger(__name__)


def _numbers(raw: list[str]) -> list[str]:
    """`raw` in E.164; `RequestInvalid` naming every number that is not one."""
    numbers, details = [], []
    for i, value in enumerate(raw):
        try:
            numbers.append(normalize_e164(value))
        except ValueError as exc:
            details.append({"loc": ["body", "numbers", i], "msg": str(exc)})
    if details:
        raise RequestInvalid(f"{len(details)} numbers are not E.164: nothing was added", details)
    return numbers


async def list_do_not_call(req: ApiRequest) -> BaseModel:
    q = req.query_as(DoNotCallQuery)
    items = await req.services.database.do_not_call.list(
        req.principal.org_id, after=q.after, limit=q.limit
    )
    return DoNotCallPage(items=items, next_after=items[-1] if len(items) == q.limit else None)


async def add_do_not_call(req: ApiRequest) -> BaseModel:
    numbers = _numbers(req.body_as(DoNotCallAdd).numbers)
    added = await req.services.database.do_not_call.add(req.principal.org_id, numbers)
    log.info("do-not-call numbers added", extra={"org_id": req.principal.org_id, "added": added})
    return DoNotCallAdded(added=added)


async def remove_do_not_call(req: ApiRequest) -> None:
    try:
        number = normalize_e164(req.path["number"])
    except ValueError as exc:
        raise RequestInvalid(str(exc), [{"loc": ["number"], "msg": str(exc)}]) from exc
    if not await req.services.database.do_not_call.remove(req.principal.org_id, number):
        raise NotFound(f"{number} is not on the do-not-call list")
    log.info("do-not-call number removed", extra={"org_id": req.principal.org_id})


OPERATIONS = [
    Operation(
        "GET", "/do-not-call", list_do_not_call,
        "The organisation's do-not-call numbers, in order, a page at a time", "do-not-call",
        query=DoNotCallQuery, response=DoNotCallPage, errors=(401, 422),
    ),
    Operation(
        "POST", "/do-not-call", add_do_not_call,
        "Add numbers to the do-not-call list (422 naming each number that is not E.164)",
        "do-not-call", body=DoNotCallAdd, response=DoNotCallAdded, status=201,
        errors=(401, 422),
    ),
    Operation(
        "DELETE", "/do-not-call/{number}", remove_do_not_call,
        "Take a number off the do-not-call list", "do-not-call",
        status=204, errors=(401, 404, 422),
    ),
]  # fmt: skip
