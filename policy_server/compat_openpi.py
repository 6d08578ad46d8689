"""openpi's WebSocket policy protocol at the root path `ws://host:port/`.

What openpi's `WebsocketClientPolicy` expects: one msgpack message of server metadata on connect,
then each binary msgpack observation dict is answered by a msgpack dict with `actions`
(`[H, action_dim]`); arrays are openpi's `{"__ndarray__": ...}` maps (codec.py); an error is a
text frame, after which the server closes the connection. The key travels as
`Authorization: Api-Key <key>` (security.py).

openpi observation keys are mapped onto this server's observation:
- image: `observation/image`, else `observation/exterior_image_1_left` (DROID), else `image`, else
  the first camera of an `images` / `image` map (ALOHA's `cam_high`, pi0's `base_0_rgb` first);
  channel-first `(3, H, W)` images are transposed. Wrist images are not used by LAPA.
- instruction: `prompt` (else `instruction`, `task`);
- state: `observation/state` (else `state`), which must then be 8 numbers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect

from policy_server import codec
from policy_server.observation import RequestError

if TYPE_CHECKING:
    from policy_server.app import Server

TRANSPORT = "openpi"
IMAGE_KEYS = ("observation/image", "observation/exterior_image_1_left", "observation/exterior_image_2_left",
              "observation.image", "image")
CAMERA_MAPS = ("images", "image", "observation/images")
CAMERA_PREFERENCE = ("cam_high", "base_0_rgb", "image", "front", "agentview")
INSTRUCTION_KEYS = ("prompt", "instruction", "task")
STATE_KEYS = ("observation/state", "state")


def register(app: FastAPI, server: Server) -> None:
    metrics = server.metrics

    @app.websocket("/")
    async def openpi(ws: WebSocket) -> None:
        await ws.accept()
        metrics.connections.labels(TRANSPORT).inc()
        try:
            await _serve(server, ws)
        except WebSocketDisconnect:
            pass
        finally:
            metrics.connections.labels(TRANSPORT).dec()


async def _fail(ws: WebSocket, err: RequestError) -> None:
    """openpi's way: the error as a text frame, then close (1011 for server errors, 1008 otherwise)."""
    await ws.send_text(f"Error {err.status}: {err.message}")
    await ws.close(1011 if err.status >= 500 else 1008)


async def _serve(server: Server, ws: WebSocket) -> None:
    service, metrics = server.service, server.metrics
    if not service.ready:
        await _fail(ws, server.error(TRANSPORT, RequestError(503, f"policy not ready ({service.status})")))
        return
    await ws.send_bytes(codec.packb(service.metadata))
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        t0 = time.perf_counter()
        metrics.count_request(TRANSPORT)
        try:
            data = message.get("bytes")
            if data is None:
                raise RequestError(400, "text frames are not accepted: send a msgpack observation")
            try:
                obs = codec.unpackb(data, server.codec_limits)
            except codec.CodecError as err:
                raise RequestError(400, str(err)) from err
            parsed = await service.parse(map_observation(obs))
            metrics.observe_stage("decode", time.perf_counter() - t0)
            reply = server.finish(TRANSPORT, await service.act(parsed), t0)
        except Exception as exc:  # noqa: BLE001 - reported to the client as openpi does
            await _fail(ws, server.error(TRANSPORT, exc))
            return
        out = {
            "actions": reply["actions"],
            "request_id": reply["request_id"],
            "model_ms": reply["model_ms"],
            "server_ms": reply["server_ms"],
            "server_timing": {"infer_ms": reply["server_ms"]},
            "policy_timing": {"infer_ms": reply["model_ms"]},
        }
        await ws.send_bytes(server.encode(codec.packb, out))


def _first(obs: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in obs:
            return obs[key]
    return None


def map_observation(obs: Any) -> dict[str, Any]:
    """An openpi observation dict -> this server's request map (image, instruction, state, request_id)."""
    if not isinstance(obs, dict):
        raise RequestError(422, f"observation must be a map, got {type(obs).__name__}")
    obs = {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in obs.items()}
    image = _first(obs, IMAGE_KEYS)
    if isinstance(image, dict) or image is None:
        cameras = image if isinstance(image, dict) else _first(obs, CAMERA_MAPS)
        image = _pick_camera(cameras) if isinstance(cameras, dict) else None
    if image is None:
        raise RequestError(422, f"observation has no image (looked for {', '.join(IMAGE_KEYS)}, "
                                f"or a camera map under {', '.join(CAMERA_MAPS)})")
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = np.ascontiguousarray(image.transpose(1, 2, 0))  # (3, H, W) -> (H, W, 3)
    instruction = _first(obs, INSTRUCTION_KEYS)
    if instruction is None:
        raise RequestError(422, f"observation has no prompt (looked for {', '.join(INSTRUCTION_KEYS)})")
    return {"image": image, "instruction": instruction, "state": _first(obs, STATE_KEYS),
            "request_id": obs.get("request_id")}


def _pick_camera(cameras: dict) -> Any:
    cameras = {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in cameras.items()}
    for name in CAMERA_PREFERENCE:
        if name in cameras:
            return cameras[name]
    return next(iter(cameras.values()), None)
