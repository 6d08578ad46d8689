"""OpenVLA's REST protocol: `POST /act` with a json_numpy body, answering one 7-D action.

OpenVLA's clients send `{"image": uint8 (H, W, 3), "instruction": str}` through json_numpy
(`json_numpy.patch()` then `requests.post(url, json=...)`), or "double-encoded" as
`{"encoded": "<json_numpy document as a string>"}`; the reply is the first action of the chunk,
float32 (7,), json_numpy-encoded (double-encoded when the request was). The reply body is the
bare array, as OpenVLA's clients expect, so the timings travel in `X-Server-Ms` / `X-Model-Ms`.
Unlike OpenVLA's server, errors are real 4xx/5xx answers with a JSON message, never a 200.

OpenVLA's request carries no proprio state, so a model that takes one (metadata `state_dim` 8)
answers /act with 422 and says where to send the state. A `state` key in the body is not read:
OpenVLA-family clients that send one (OpenVLA-OFT) use another convention (axis-angle, not
roll/pitch/yaw), which would be fed to the model silently wrong.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import Response

from policy_server import codec
from policy_server.observation import RequestError

if TYPE_CHECKING:
    from policy_server.app import Server

TRANSPORT = "openvla"
STATE_UNSUPPORTED = ("this model takes the proprio state, which OpenVLA's /act request does not carry: use "
                     "POST /v1/act or WS /v1/stream with 'state' (8 floats [x, y, z, roll, pitch, yaw, finger_left, "
                     "finger_right]), or openpi's protocol with 'observation/state'")


def register(app: FastAPI, server: Server) -> None:
    from policy_server.app import error_response

    service, metrics = server.service, server.metrics

    async def act(request: Request) -> Response:
        t0 = time.perf_counter()
        metrics.count_request(TRANSPORT)
        try:
            service.check_ready()
            body = await server.read_body(request)
            payload, double = decode_payload(body, server.codec_limits)
            if service.metadata.get("state_dim"):
                raise RequestError(422, STATE_UNSUPPORTED)
            parsed = await service.parse({"image": payload.get("image"), "instruction": payload.get("instruction"),
                                          "request_id": payload.get("request_id")}, text_images=True)
            metrics.observe_stage("decode", time.perf_counter() - t0)
            reply = server.finish(TRANSPORT, await service.act(parsed), t0)
        except Exception as err:  # noqa: BLE001 - every failure becomes a 4xx/5xx with a message
            return error_response(server.error(TRANSPORT, err))
        action = reply["actions"][0]
        content = server.encode(lambda a: encode_action(a, double), action)
        return Response(content, media_type="application/json",
                        headers={"X-Server-Ms": f"{reply['server_ms']:.3f}", "X-Model-Ms": f"{reply['model_ms']:.3f}",
                                 "X-Request-Id": str(reply["request_id"])})

    app.add_route("/act", act, methods=["POST"])


def decode_payload(body: bytes, limits: codec.Limits) -> tuple[dict, bool]:
    """(payload map, double_encoded); RequestError for anything that is not an OpenVLA request."""
    try:
        payload = codec.json_loads(body, limits)
        double = isinstance(payload, dict) and "encoded" in payload
        if double:
            if set(payload) != {"encoded"} or not isinstance(payload["encoded"], str):
                raise RequestError(422, "a double-encoded request holds only 'encoded', a string")
            payload = codec.json_loads(payload["encoded"], limits)
    except codec.CodecError as err:
        raise RequestError(400, str(err)) from err
    if not isinstance(payload, dict):
        raise RequestError(422, f"request must be a JSON object, got {type(payload).__name__}")
    for key in ("image", "instruction"):
        if key not in payload:
            raise RequestError(422, f"request has no {key!r}")
    return payload, double


def encode_action(action, double: bool) -> bytes:
    encoded = codec.json_dumps(action)
    return json.dumps(encoded.decode()).encode() if double else encoded
