"""/v1/generators: what a request may name as its `generator`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import Reader
from app.api.errors import responses
from app.api.schemas import GeneratorInfo, GeneratorList
from app.worker.generators.catalog import Catalog

router = APIRouter(prefix="/v1", tags=["videos"])


@router.get(
    "/generators",
    response_model=GeneratorList,
    responses=responses(401, 403),
    summary="The configured generators: name, kind, and which is the default",
)
def list_generators(request: Request, _: Reader) -> GeneratorList:
    found: Catalog = request.app.state.generators
    return GeneratorList(
        items=[
            GeneratorInfo(name=e.name, kind=e.kind, default=e.name == found.default)
            for e in found.entries.values()
        ]
    )
