"""The caller's own organisation through the API: its name, the caller lookup URL its
inbound calls use when their assistant sets none (checked by the SSRF guard), and its cap
on live calls with the share kept for inbound calls (enforced by the call paths)."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from gateway.api.assistants import require_safe_url
from gateway.api.models import OrganizationOut, OrganizationPatch
from gateway.api.operations import ApiRequest, Operation
from gateway.errors import RequestInvalid
from storage import Organization, redact_credentials

log = logging.getLogger(__name__)


async def get_organization(req: ApiRequest) -> BaseModel:
    accounts = req.services.database.accounts
    return OrganizationOut.of(await accounts.get_organization(req.principal.org_id))


async def update_organization(req: ApiRequest) -> BaseModel:
    patch = req.body_as(OrganizationPatch)
    accounts, org_id = req.services.database.accounts, req.principal.org_id
    caps = {"max_concurrent_calls", "inbound_reserved_calls"} & patch.model_fields_set
    org = await _set_caps(req, patch) if caps else await accounts.get_organization(org_id)
    if "inbound_lookup_url" not in patch.model_fields_set:
        return OrganizationOut.of(org)
    url = patch.inbound_lookup_url
    if url:
        require_safe_url(req.services.ssrf_guard, url, field="inbound_lookup_url")
    org = await accounts.set_inbound_lookup_url(org_id, url)
    log.info(
        "organisation lookup URL set",
        extra={"org_id": org_id, "lookup_url": redact_credentials(url) if url else None},
    )
    return OrganizationOut.of(org)


async def _set_caps(req: ApiRequest, patch: OrganizationPatch) -> Organization:
    """Store the caps the patch gives over the stored ones: reserved must stay below the
    cap (422 otherwise); clearing the cap (null) clears the reservation too."""
    accounts, org_id = req.services.database.accounts, req.principal.org_id
    org = await accounts.get_organization(org_id)
    given = patch.model_fields_set
    cap = (
        patch.max_concurrent_calls if "max_concurrent_calls" in given else org.max_concurrent_calls
    )
    if "inbound_reserved_calls" in given:
        reserved = patch.inbound_reserved_calls or 0
    else:
        reserved = org.inbound_reserved_calls if cap is not None else 0
    if cap is not None and reserved >= cap:
        raise RequestInvalid(
            f"inbound_reserved_calls ({reserved}) must be below max_concurrent_calls ({cap})",
            [{"loc": ["body", "inbound_reserved_calls"], "msg": f"must be below {cap}"}],
        )
    if cap is None and reserved > 0:
        raise RequestInvalid(
            "inbound_reserved_calls needs max_concurrent_calls (there is no cap to reserve from)",
            [{"loc": ["body", "inbound_reserved_calls"], "msg": "no cap set"}],
        )
    updated = await accounts.set_call_caps(
        org_id, max_concurrent_calls=cap, inbound_reserved_calls=reserved
    )
    log.info(
        "organisation call caps set",
        extra={"org_id": org_id, "max_concurrent_calls": cap, "inbound_reserved_calls": reserved},
    )
    return updated


OPERATIONS = [
    Operation(
        "GET", "/organization", get_organization, "The caller's organisation", "organization",
        response=OrganizationOut, errors=(401,),
    ),
    Operation(
        "PATCH", "/organization", update_organization,
        "Change the caller's organisation (caller lookup URL, cap on live calls)", "organization",
        body=OrganizationPatch, response=OrganizationOut, errors=(401, 422),
    ),
]  # fmt: skip
