"""/v1/me: who the caller is, so a client can show only what its key may do."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Reader
from app.api.errors import responses
from app.api.schemas import Me
from app.keys import ANONYMOUS, GRANTS

router = APIRouter(prefix="/v1", tags=["auth"])


@router.get(
    "/me",
    response_model=Me,
    responses=responses(401),
    summary="The calling key's name, role and permissions (open mode: anonymous admin)",
)
def me(principal: Reader) -> Me:
    return Me(
        name=principal.name,
        role=principal.role.value,
        permissions=sorted(GRANTS[principal.role]),
        open=principal is ANONYMOUS,
    )
