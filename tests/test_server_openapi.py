"""The server's OpenAPI document: published (behind the key off loopback) and fuzzed with schemathesis
against a real server process: no server error and every answer within the document."""

from __future__ import annotations

import base64
import json

import cv2
import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from policy_fakes import ServerProcess
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.timeout(240)
ENDPOINTS = {"/v1/act", "/act", "/v1/intent", "/v1/reset", "/v1/metadata", "/healthz", "/readyz", "/metrics", "/"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from ServerProcess(tmp_path_factory.mktemp("openapi") / "server.log").running()


def test_the_document_describes_every_http_endpoint(server):
    doc = httpx.get(server.http_url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1") and set(doc["paths"]) == ENDPOINTS
    act = doc["components"]["schemas"]["ActRequest"]
    assert act["required"] == ["image", "instruction"] and "state" in act["properties"]
    assert "/openapi.json" in httpx.get(server.http_url + "/", timeout=10).json()["endpoints"]


def test_the_document_needs_the_key_like_every_endpoint_but_healthz(tmp_path):
    for srv in ServerProcess(tmp_path / "server.log", api_key="k" * 32).running():
        assert httpx.get(srv.http_url + "/openapi.json", timeout=10).status_code == 401
        r = httpx.get(srv.http_url + "/openapi.json", headers={"X-API-Key": "k" * 32}, timeout=10)
        assert r.status_code == 200 and "/v1/act" in r.json()["paths"]


def test_fuzzed_requests_get_no_server_error_and_answers_match_the_document(server):
    """schemathesis generates requests from the document for every operation (hypothesis, fixed seed)."""
    schema = schemathesis.openapi.from_url(server.http_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == ENDPOINTS
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=10)

        check()


def test_valid_requests_are_answered_as_the_document_says(server):
    """Fuzzed bodies are mostly refused (random bytes are no JPEG); these take the success paths."""
    schema = schemathesis.openapi.from_url(server.http_url + "/openapi.json")
    operations = {op.path: op for op in (result.ok() for result in schema.get_all_operations())}
    png = base64.b64encode(cv2.imencode(".png", np.zeros((48, 48, 3), np.uint8))[1].tobytes()).decode()
    pixels = np.full((32, 40, 3), 7, np.uint8).tolist()
    for path, body in [("/v1/act", {"image": png, "instruction": "reach the red block", "request_id": "a1"}),
                       ("/v1/act", {"image": pixels, "instruction": "push the blue block left"}),
                       ("/act", {"image": pixels, "instruction": "reach the red block"}),
                       ("/act", {"encoded": json.dumps({"image": png, "instruction": "reach the red block"})})]:
        case = operations[path].Case(body=body, media_type="application/json")
        response = case.call_and_validate(checks=CHECKS, timeout=10)
        assert response.status_code == 200, (path, response.text)
