"""Phone numbers through the API: an organisation registers the free numbers it uses
(assistant numbers, SIP trunk numbers, outbound caller ids), lists and releases them.

Self-service covers free numbers only: `POST /numbers` with any key of the organisation
claims a number no one holds. A number another organisation holds, or one the operator
reserved, answers 409 "not available to this organisation", the same in both cases and
never naming the holder; disputes go to the operator (`voice-gateway numbers assign`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import BaseModel

from gateway.api.models import NumberClaim, NumberList, NumberOut
from gateway.api.operations import ApiRequest, Operation
from gateway.errors import ConflictError, RequestInvalid
from storage import Database, NotFound, normalize_e164

log = logging.getLogger(__name__)


async def require_registered(
    database: Database, org_id: str, numbers: Sequence[str] | str, *, field: str
) -> None:
    """`RequestInvalid` (422, naming `field`) unless every number (a list field's, or a
    single one's) is registered to `org_id`; the answer is the same whether a number is
    free, another's or reserved."""
    listed = [numbers] if isinstance(numbers, str) else list(numbers)
    missing = set(await database.numbers.not_registered(org_id, listed))
    if not missing:
        return
    details = [
        {
            "loc": [field] if isinstance(numbers, str) else [field, i],
            "msg": f"{n} is not registered to this organisation",
        }
        for i, n in enumerate(listed)
        if n in missing
    ]
    raise RequestInvalid(
        f"{field}: {', '.join(sorted(missing))} not registered to this organisation "
        "(register a number with POST /numbers)",
        details,
    )


async def adopt_used_numbers(database: Database) -> None:
    """Register the numbers assistants and trunks used before the registry (once per
    database; see `PhoneNumberRepository.adopt_used_numbers`) and log what was done."""
    adoption = await database.numbers.adopt_used_numbers()
    for number, org_id in adoption.adopted.items():
        log.info("number registered to its organisation", extra={"number": number, "org": org_id})
    for number, orgs in adoption.disputed.items():
        log.warning(
            "number used by several organisations left unregistered: it reaches no assistant "
            "until the operator runs `voice-gateway numbers assign`",
            extra={"number": number, "orgs": sorted(orgs)},
        )


def _path_number(req: ApiRequest) -> str:
    try:
        return normalize_e164(req.path["number"])
    except ValueError as exc:
        raise RequestInvalid(str(exc), [{"loc": ["number"], "msg": str(exc)}]) from exc


async def claim_number(req: ApiRequest) -> BaseModel:
    number = req.body_as(NumberClaim).number
    record = await req.services.database.numbers.claim(req.principal.org_id, number)
    log.info("number claimed", extra={"number": number, "org": req.principal.org_id})
    return NumberOut.of(record)


async def list_numbers(req: ApiRequest) -> BaseModel:
    records = await req.services.database.numbers.entries(req.principal.org_id)
    return NumberList(items=[NumberOut.of(r) for r in records])


async def release_number(req: ApiRequest) -> None:
    """Free a number of the organisation that none of its assistants or trunks lists."""
    number, org_id, db = _path_number(req), req.principal.org_id, req.services.database
    owner = await db.numbers.owner(number)
    if owner is None or owner.org_id != org_id:
        raise NotFound(f"no number {number} in this organisation")
    users = [f"assistant {a.id}" for a in await db.assistants.using_number(org_id, number)]
    users += [f"trunk {t.id}" for t in await db.sip.trunks_with_number(number, org_id=org_id)]
    if users:
        raise ConflictError(f"{number} is in use by " + ", ".join(users))
    await db.numbers.release(number, org_id=org_id)
    log.info("number released", extra={"number": number, "org": org_id})


OPERATIONS = [
    Operation(
        "POST", "/numbers", claim_number,
        "Register a free phone number to the organisation (409 if it is not available)",
        "numbers", body=NumberClaim, response=NumberOut, status=201, errors=(401, 409, 422),
    ),
    Operation(
        "GET", "/numbers", list_numbers, "The organisation's phone numbers", "numbers",
        response=NumberList, errors=(401,),
    ),
    Operation(
        "DELETE", "/numbers/{number}", release_number,
        "Release a phone number no assistant or trunk of the organisation uses", "numbers",
        status=204, errors=(401, 404, 409, 422),
    ),
]  # fmt: skip
