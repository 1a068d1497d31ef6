"""The caller's own organisation through the API: its name, and the caller lookup URL its
inbound calls use when their assistant sets none (checked by the SSRF guard)."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from gateway.api.assistants import require_safe_url
from gateway.api.models import OrganizationOut, OrganizationPatch
from gateway.api.operations import ApiRequest, Operation
from storage import redact_credentials

log = logging.getLogger(__name__)


async def get_organization(req: ApiRequest) -> BaseModel:
    accounts = req.services.database.accounts
    return OrganizationOut.of(await accounts.get_organization(req.principal.org_id))


async def update_organization(req: ApiRequest) -> BaseModel:
    patch = req.body_as(OrganizationPatch)
    accounts, org_id = req.services.database.accounts, req.principal.org_id
    if "inbound_lookup_url" not in patch.model_fields_set:
        return OrganizationOut.of(await accounts.get_organization(org_id))
    url = patch.inbound_lookup_url
    if url:
        require_safe_url(req.services.ssrf_guard, url, field="inbound_lookup_url")
    org = await accounts.set_inbound_lookup_url(org_id, url)
    log.info(
        "organisation lookup URL set",
        extra={"org_id": org_id, "lookup_url": redact_credentials(url) if url else None},
    )
    return OrganizationOut.of(org)


OPERATIONS = [
    Operation(
        "GET", "/organization", get_organization, "The caller's organisation", "organization",
        response=OrganizationOut, errors=(401,),
    ),
    Operation(
        "PATCH", "/organization", update_organization,
        "Change the caller's organisation (its caller lookup URL)", "organization",
        body=OrganizationPatch, response=OrganizationOut, errors=(401, 422),
    ),
]  # fmt: skip
