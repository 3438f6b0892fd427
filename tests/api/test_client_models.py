"""The client's models cannot drift from the server: each one names exactly
the fields of its schema in the server's `/openapi.json`, and demands none
the server may leave out."""

from __future__ import annotations

import vidledger_client as vl
from fastapi.testclient import TestClient
from pydantic import BaseModel
from vidledger_client.models import GeneratorQueue, HasVideo

#: Client model -> the server's schema of the same resource.
PAIRS: list[tuple[type[BaseModel], str]] = [
    (vl.VideoStatus, "VideoStatus"),
    (vl.VideoError, "VideoError"),
    (HasVideo, "HasVideo"),
    (vl.Transition, "Transition"),
    (vl.Event, "Event"),
    (vl.Task, "Task"),
    (vl.Heartbeat, "HeartbeatOut"),
    (vl.GeneratorInfo, "GeneratorInfo"),
    (GeneratorQueue, "GeneratorQueue"),
    (vl.Stats, "Stats"),
    (vl.Me, "Me"),
    (vl.Endpoint, "EndpointOut"),
    (vl.EndpointCreated, "EndpointCreated"),
    (vl.Delivery, "DeliveryOut"),
]


def test_each_client_model_has_its_schema_s_fields(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for model, name in PAIRS:
        schema = schemas[name]
        assert set(model.model_fields) == set(schema["properties"]), name
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        # The client never demands a field the server may leave out.
        assert required <= set(schema.get("required", [])), (name, required)


def test_every_problem_code_has_its_error_class() -> None:
    from vidledger_client.errors import error_for

    from app.api.errors import ERROR_TABLE

    for _, status, code in ERROR_TABLE:
        raised = error_for(status, {"code": code, "detail": "x"}, None)
        assert type(raised).code_name == code, code
