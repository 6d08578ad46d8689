"""The policy server's OpenAPI 3.1 document (`GET /openapi.json`): the JSON forms of every HTTP endpoint.

Written by hand because the hot routes (`/v1/act`, `/act`) are plain Starlette routes that FastAPI's
generator does not see, and because their bodies are not one Pydantic model: an image is a base64
JPEG/PNG string or nested lists of pixels. msgpack bodies (the binary form of `/v1/act` and the
WebSocket `/v1/stream`) are described in words; a schema language for JSON cannot express them.
Behind the API key like every endpoint but /healthz.
"""

from __future__ import annotations

from typing import Any

from lapa.action import ACTION_DIM, STATE_DIM
from lapa.state_history import MAX_STATE_FLOATS

ERROR_STATUSES = ("400", "401", "409", "413", "415", "422", "503")

_ERROR = {
    "type": "object", "required": ["error", "status"],
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"},
                   "request_id": {"type": ["string", "integer"]}},
}
_IMAGE = {
    "description": "RGB image: base64 of a JPEG or PNG file, or (H, W, 3) nested lists of 0-255 integers. "
                   "Resized to the model's input; sides below the server's minimum are refused.",
    "oneOf": [
        {"type": "string", "contentEncoding": "base64"},
        {"type": "array", "items": {"type": "array", "items": {
            "type": "array", "minItems": 3, "maxItems": 3,
            "items": {"type": "integer", "minimum": 0, "maximum": 255}}}},
    ],
}
_INSTRUCTION = {"type": "string", "minLength": 1, "description": "the language command"}
_REQUEST_ID = {"type": ["string", "integer"], "description": "echoed; a repeated id is answered from memory"}
_ACT_REQUEST = {
    "type": "object", "required": ["image", "instruction"],
    "properties": {
        "image": _IMAGE, "instruction": _INSTRUCTION, "request_id": _REQUEST_ID,
        "wrist_image": {**_IMAGE, "description": "the hand camera's RGB image, in the forms of 'image'; required by "
                                                 "models whose /v1/metadata cameras are [scene, wrist]"},
        "state": {"type": ["array", "null"], "minItems": STATE_DIM, "maxItems": MAX_STATE_FLOATS,
                  "items": {"type": "number"},
                  "description": "proprio state (EE xyz, roll/pitch/yaw, finger positions); required by "
                                 "models with a state input, exactly /v1/metadata state_dim numbers: 8, or "
                                 "8 per state for a model with a state_history (now, then each lag back)"},
    },
}
_ACT_REPLY = {
    "type": "object", "required": ["request_id", "actions", "model_ms", "server_ms"],
    "properties": {
        "request_id": {"type": ["string", "integer"]},
        "actions": {"type": "array", "minItems": 1, "items": {
            "type": "array", "minItems": ACTION_DIM, "maxItems": ACTION_DIM, "items": {"type": "number"}},
            "description": f"a chunk of K actions of {ACTION_DIM}: [dx, dy, dz, droll, dpitch, dyaw, gripper]"},
        "model_ms": {"type": "number"}, "server_ms": {"type": "number"},
    },
}
_OPENVLA_REQUEST = {
    "oneOf": [
        {"type": "object", "required": ["image", "instruction"],
         "properties": {"image": _IMAGE, "instruction": _INSTRUCTION, "request_id": _REQUEST_ID,
                        "unnorm_key": {"type": "string"}}},
        {"type": "object", "required": ["encoded"], "additionalProperties": False,
         "properties": {"encoded": {"type": "string", "description": "the same request, JSON-encoded again"}}},
    ],
}
_OPENVLA_REPLY = {
    "description": "one action of 7 as a json-numpy array (a string when the request was double-encoded)",
    "oneOf": [
        {"type": "object", "required": ["__numpy__", "dtype", "shape"],
         "properties": {"__numpy__": {"type": "string"}, "dtype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}}}},
        {"type": "string"},
    ],
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors() -> dict[str, Any]:
    return {code: _json({"$ref": "#/components/schemas/Error"}, "refused, with the reason")
            for code in ERROR_STATUSES}


def _get(summary: str, schema: dict[str, Any], *, errors: bool = True) -> dict[str, Any]:
    responses = {"200": _json(schema, summary)}
    if errors:
        responses.update({"401": _errors()["401"], "503": _errors()["503"]})
    return {"get": {"summary": summary, "responses": responses}}


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this server (`version`: the package version)."""
    act_body = {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/ActRequest"}},
        "application/msgpack": {"schema": {"type": "string", "format": "binary"},
                                "description": "the same map in msgpack; raw images as openpi's numpy maps"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "lapa policy server", "version": version,
                 "description": "A vision-language-action policy: image + instruction (+ state) -> a chunk "
                                "of delta end-effector actions. Binary clients use msgpack over HTTP or the "
                                "WebSocket /v1/stream (not described here)."},
        "components": {
            "schemas": {"Error": _ERROR, "ActRequest": _ACT_REQUEST, "ActReply": _ACT_REPLY},
            "securitySchemes": {
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"}},
        },
        "security": [{}, {"apiKeyHeader": []}, {"bearer": []}, {"apiKeyQuery": []}],
        "paths": {
            "/v1/act": {"post": {
                "summary": "one action chunk for an observation", "requestBody": act_body,
                "responses": {"200": _json({"$ref": "#/components/schemas/ActReply"}, "the action chunk"),
                              **_errors()}}},
            "/act": {"post": {
                "summary": "OpenVLA-compatible: one action for an image and an instruction",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _OPENVLA_REQUEST}}},
                "responses": {"200": _json(_OPENVLA_REPLY, "one action"), **_errors()}}},
            "/v1/intent": {"post": {
                "summary": "the intent preview (a server started with --intent): the latent action codes the "
                           "VLA's latent-action head predicts and the frames the LAQ decoder imagines from them",
                "requestBody": act_body,
                "responses": {"200": _json({
                    "type": "object", "required": ["latent_codes", "frames_png", "model_ms"],
                    "properties": {"latent_codes": {"type": "array", "items": {"type": "array",
                                                                               "items": {"type": "integer"}}},
                                   "frames_png": {"type": "array", "items": {"type": "string"},
                                                  "description": "base64 PNG per imagined step"},
                                   "model_ms": {"type": "number"}}},
                    "latent codes (T, L) and T imagined frames (msgpack: `frames` uint8 (T, h, w, 3))"),
                              "404": _json({"$ref": "#/components/schemas/Error"},
                                           "this server has no intent preview"),
                              **_errors()}}},
            "/v1/reset": {"post": {
                "summary": "reset the policy's episode state",
                "responses": {"200": _json({"type": "object", "required": ["status"],
                                            "properties": {"status": {"const": "reset"}}}, "reset"),
                              **_errors()}}},
            "/v1/metadata": _get("the model and protocol description", {
                "type": "object", "required": ["image_size", "chunk_size", "action_dim", "control_hz"],
                "properties": {"image_size": {"type": "array", "items": {"type": "integer"}},
                               "chunk_size": {"type": "integer"}, "action_dim": {"type": "integer"},
                               "control_hz": {"type": "number"}}}),
            "/healthz": _get("the process is up (no API key needed)", {
                "type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                errors=False),
            "/readyz": _get("the policy is loaded and warm (503 while loading or after a failure)", {
                "type": "object", "required": ["status"],
                "properties": {"status": {"type": "string"}, "error": {"type": "string"}}}),
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {
                    "type": "string"}}}},
                "401": _errors()["401"]}}},
            "/": _get("the service and its endpoints", {
                "type": "object", "required": ["service", "endpoints"],
                "properties": {"service": {"type": "string"}, "protocol": {"type": "string"},
                               "endpoints": {"type": "array", "items": {"type": "string"}}}}),
        },
    }
