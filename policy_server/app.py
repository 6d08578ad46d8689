"""`lapa-server`: the FastAPI policy server (HTTP, WebSocket, and the openpi/OpenVLA protocols).

Endpoints (all but /healthz need the API key when one is set):
  POST /v1/act        one request (msgpack body, or JSON) -> one reply
  WS   /v1/stream     metadata frame on connect, then msgpack request/reply frames
  GET  /v1/metadata   action space, chunk size K, control_hz, image size, model hash
  POST /v1/reset      policy.reset() (start of an episode)
  POST /v1/intent     the intent preview (with --intent): latent action codes and imagined frames
  GET  /healthz       the process is up (no key needed)
  GET  /readyz        the model is loaded and warmed up
  GET  /metrics       Prometheus
  POST /act           OpenVLA's REST protocol (json_numpy)          -> compat_openvla
  WS   /              openpi's WebSocket policy protocol            -> compat_openpi

Replies to /v1/act and /v1/stream: `{"request_id", "actions": float32 (K, 7), "model_ms",
"queue_ms", "server_ms", "replayed"}`; errors are 4xx/5xx with `{"error", "status", "request_id"}`
(a msgpack error frame on the stream). See service.py for the request-id (retry) semantics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.websockets import WebSocketDisconnect

from lapa import __version__
from lapa.policy_protocol import Policy
from lapa.realtime import MAX_PRIORITY, check_priority, make_thread_realtime
from policy_server import codec
from policy_server.http_body import read_limited_body
from policy_server.metrics import Metrics
from policy_server.observation import InputLimits, RequestError
from policy_server.openapi import openapi_document
from policy_server.security import ApiKeyMiddleware, InsecureBindError, check_bind, resolve_api_key
from policy_server.service import PolicyService, ServiceConfig

log = logging.getLogger("policy_server")

MSGPACK = "application/msgpack"
_MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack",
                            "application/octet-stream"})


class Server:
    """What the routes share: the service, metrics and the codec limits."""

    def __init__(self, service: PolicyService) -> None:
        self.service = service
        self.metrics = service.metrics
        max_bytes = service.config.max_body_bytes
        self.codec_limits = codec.Limits(max_message_bytes=max_bytes, max_array_bytes=max_bytes)

    # ------------------------------------------------------------------------------ HTTP helpers

    async def read_body(self, request: Request) -> bytes:
        return await read_limited_body(request, self.service.config.max_body_bytes, RequestError)

    def decode_body(self, body: bytes, content_type: str | None) -> tuple[Any, str]:
        """(decoded message, "msgpack" | "json"); 415 for other types, 400 for malformed bodies."""
        kind = _body_kind(content_type, body)
        try:
            if kind == "json":
                return codec.json_loads(body, self.codec_limits), kind
            return codec.unpackb(body, self.codec_limits), kind
        except codec.CodecError as err:
            raise RequestError(400, str(err)) from err

    def error(self, transport: str, err: Exception) -> RequestError:
        """Count an error and turn it into a RequestError (unexpected exceptions become 500)."""
        if not isinstance(err, RequestError):
            log.exception("unexpected error on %s", transport)
            err = RequestError(500, f"internal error: {type(err).__name__}: {err}")
        self.metrics.errors.labels(transport, str(err.status)).inc()
        return err

    def finish(self, transport: str, reply: dict[str, Any], t0: float) -> dict[str, Any]:
        server_s = time.perf_counter() - t0
        reply["server_ms"] = 1e3 * server_s
        self.metrics.observe_request(transport, server_s)
        return reply

    def encode(self, fn: Callable[[Any], bytes], obj: Any) -> bytes:
        t = time.perf_counter()
        data = fn(obj)
        self.metrics.observe_stage("encode", time.perf_counter() - t)
        return data


def error_response(err: RequestError) -> JSONResponse:
    body = {"error": err.message, "status": err.status}
    if err.request_id is not None:
        body["request_id"] = err.request_id
    headers = {"Retry-After": "1"} if err.status == 503 else None
    return JSONResponse(body, status_code=err.status, headers=headers)


def error_frame(err: RequestError) -> dict[str, Any]:
    return {"error": err.message, "status": err.status, "request_id": err.request_id}


def _body_kind(content_type: str | None, body: bytes) -> str:
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media == "application/json" or media.endswith("+json"):
            return "json"
        if media in _MSGPACK_TYPES:
            return "msgpack"
        raise RequestError(415, f"unsupported Content-Type {media!r}: send {MSGPACK} or application/json")
    return "json" if body[:1] in (b"{", b"[") else "msgpack"


def _wants_json(request: Request, kind: str) -> bool:
    accept = request.headers.get("accept", "")
    if "msgpack" in accept:
        return False
    return kind == "json" or accept.startswith("application/json")


def _png_base64(frame: Any) -> str:
    import base64

    import cv2

    return base64.b64encode(cv2.imencode(".png", frame[:, :, ::-1])[1].tobytes()).decode("ascii")


def _json_reply(reply: dict[str, Any]) -> bytes:
    plain = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in reply.items()}
    return json.dumps(plain, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------- app


def create_app(service: PolicyService, api_key: str | None = None,
               on_load_failed: Callable[[], None] | None = None) -> Any:
    """The ASGI app: FastAPI routes behind the API-key check. Starts loading the policy on startup."""
    server = Server(service)
    metrics = service.metrics

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        async def load() -> None:
            await service.start_loading()
            if service.status == "failed" and on_load_failed is not None:
                on_load_failed()

        task = asyncio.create_task(load())
        yield
        task.cancel()
        service.close()

    app = FastAPI(title="lapa policy server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    document = openapi_document(__version__)
    app.openapi = lambda: document  # the hand-written document (policy_server/openapi.py)
    app.state.server = server

    # The hot HTTP route is a plain Starlette endpoint, also reached past FastAPI's middleware
    # stack and router (`HotRoutes`, ~0.1 ms a request); it turns every failure into a reply itself.
    async def act(request: Request) -> Response:
        t0 = time.perf_counter()
        metrics.count_request("http")
        try:
            service.check_ready()
            body = await server.read_body(request)
            msg, kind = server.decode_body(body, request.headers.get("content-type"))
            parsed = await service.parse(msg, text_images=kind == "json")
            metrics.observe_stage("decode", time.perf_counter() - t0)
            reply = server.finish("http", await service.act(parsed), t0)
        except Exception as err:  # noqa: BLE001
            return error_response(server.error("http", err))
        headers = {"X-Server-Ms": f"{reply['server_ms']:.3f}", "X-Model-Ms": f"{reply['model_ms']:.3f}"}
        if _wants_json(request, kind):
            return Response(server.encode(_json_reply, reply), media_type="application/json", headers=headers)
        return Response(server.encode(codec.packb, reply), media_type=MSGPACK, headers=headers)

    app.add_route("/v1/act", act, methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        body = {"status": service.status}
        if service.error:
            body["error"] = service.error
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/metadata")
    async def metadata(request: Request) -> Response:
        try:
            service.check_ready()
        except RequestError as err:
            return error_response(err)
        if "msgpack" in request.headers.get("accept", ""):
            return Response(codec.packb(service.metadata), media_type=MSGPACK)
        return JSONResponse(service.metadata)

    @app.post("/v1/intent")
    async def intent(request: Request) -> Response:
        """Like /v1/act's body; the reply: `latent_codes` int64 (T, L), `frames` uint8 (T, h, w, 3) (msgpack) or
        `frames_png` (base64 PNGs, JSON), `model_ms`."""
        try:
            service.check_ready()
            body = await server.read_body(request)
            msg, kind = server.decode_body(body, request.headers.get("content-type"))
            parsed = await service.parse(msg, text_images=kind == "json")
            out = await service.intent(parsed)
        except Exception as err:  # noqa: BLE001
            return error_response(server.error("http", err))
        if _wants_json(request, kind):
            return JSONResponse({"latent_codes": out["latent_codes"].tolist(), "model_ms": out["model_ms"],
                                 "frames_png": [_png_base64(f) for f in out["frames"]]})
        return Response(codec.packb(out), media_type=MSGPACK)

    @app.post("/v1/reset")
    async def reset() -> Response:
        try:
            await service.reset()
        except Exception as err:  # noqa: BLE001 - every failure becomes a 4xx/5xx with a message
            return error_response(server.error("http", err))
        return JSONResponse({"status": "reset"})

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        metrics.connections.labels("websocket").inc()
        try:
            await _stream(server, ws)
        except WebSocketDisconnect:
            pass
        finally:
            metrics.connections.labels("websocket").dec()

    @app.get("/")
    async def index() -> JSONResponse:
        return JSONResponse({"service": "lapa policy server", "protocol": "lapa-policy/1",
                             "endpoints": ["/v1/act", "/v1/stream", "/v1/metadata", "/v1/reset", "/v1/intent",
                                           "/healthz", "/readyz", "/metrics", "/openapi.json", "/act (OpenVLA)",
                                           "ws:/ (openpi)"]})

    from policy_server import compat_openpi, compat_openvla

    compat_openvla.register(app, server)
    compat_openpi.register(app, server)
    hot = HotRoutes(app, {("POST", "/v1/act"): act})
    return ApiKeyMiddleware(hot, api_key, on_failure=metrics.auth_failures.inc)


class HotRoutes:
    """ASGI: the listed (method, path) HTTP requests go straight to their endpoint, everything else
    (and every other method on those paths: FastAPI answers 405) to `app`. The endpoints must catch
    their own errors: no exception middleware is in between."""

    def __init__(self, app: Callable, endpoints: dict[tuple[str, str], Callable[[Request], Any]]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        endpoint = self.endpoints.get((scope.get("method"), scope.get("path"))) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


async def _stream(server: Server, ws: WebSocket) -> None:
    """The /v1/stream loop: input errors answer with an error frame and keep the connection; a frame
    that is not msgpack, or a text frame, gets an error frame and closes it."""
    service, metrics = server.service, server.metrics
    if not service.ready:
        await ws.send_bytes(codec.packb(error_frame(RequestError(503, f"policy not ready ({service.status})"))))
        await ws.close(1013)  # try again later
        return
    await ws.send_bytes(codec.packb(service.metadata))
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        t0 = time.perf_counter()
        metrics.count_request("websocket")
        data = message.get("bytes")
        if data is None:
            err = server.error("websocket", RequestError(400, "text frames are not accepted: send msgpack binary"))
            await ws.send_bytes(codec.packb(error_frame(err)))
            await ws.close(1003)
            return
        try:
            msg = codec.unpackb(data, server.codec_limits)
        except codec.CodecError as exc:
            err = server.error("websocket", RequestError(400, str(exc)))
            await ws.send_bytes(codec.packb(error_frame(err)))
            await ws.close(1007)
            return
        try:
            parsed = await service.parse(msg)
            metrics.observe_stage("decode", time.perf_counter() - t0)
            reply = server.finish("websocket", await service.act(parsed), t0)
        except Exception as exc:  # noqa: BLE001 - answered with an error frame
            await ws.send_bytes(codec.packb(error_frame(server.error("websocket", exc))))
            continue
        await ws.send_bytes(server.encode(codec.packb, reply))


# ---------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lapa-server", description="Serve a LAPA policy over HTTP and WebSocket.")
    p.add_argument("--model", help="checkpoint or export directory")
    p.add_argument("--backend", default="torch",
                   help="torch | onnxruntime | tensorrt | MODULE:FACTORY (factory(model_dir, threads) -> Policy)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs an API key")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="required on every endpoint but /healthz (default: $LAPA_API_KEY)")
    p.add_argument("--intent", metavar="DIR",
                   help="serve the intent preview (POST /v1/intent) from DIR: a model directory with intent/, or "
                        "an intent directory (latent/ + laq/, lapa/policy/intent.py); needs torch")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for the model")
    p.add_argument("--warmup", type=int, default=3, help="inferences before reporting ready")
    p.add_argument("--rt-priority", type=int, default=0,
                   help="1..99: run the event loop (and the threads it starts: model, decoding) SCHED_FIFO at this "
                        "priority (needs CAP_SYS_NICE; 0 = normal scheduling)")
    p.add_argument("--inline-model-ms", type=float, default=ServiceConfig.inline_model_max_ms,
                   help="run the model on the event loop when its warm-up calls take at most this many ms "
                        "(median; no thread hand-off per request); 0: always on its own thread")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body or WebSocket frame")
    p.add_argument("--max-image-side", type=int, default=4096)
    p.add_argument("--min-image-side", type=int, default=32,
                   help="refuse (422) images with a side below this many pixels")
    p.add_argument("--max-instruction-chars", type=int, default=512)
    p.add_argument("--no-resize", action="store_true", help="answer 422 to images not of the model's size")
    p.add_argument("--replay-ttl", type=float, default=30.0, help="seconds a reply is kept for retries")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true")
    return p


def _load_intent(directory: str) -> Any:
    """The intent preview model; imported only with --intent (it needs torch)."""
    from lapa.policy.intent import IntentModel

    return IntentModel.load(directory)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.inline_model_ms < 0:
        print("lapa-server: error: --inline-model-ms must be >= 0 (0: never on the event loop)", file=sys.stderr)
        return 2
    try:
        check_priority(args.rt_priority)
    except ValueError:
        print(f"lapa-server: error: --rt-priority must be 0 (off) or 1..{MAX_PRIORITY}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = resolve_api_key(args.api_key)
    try:
        check_bind(args.host, api_key)
    except InsecureBindError as err:
        print(f"lapa-server: error: {err}", file=sys.stderr)
        return 2
    from policy_server.backends import BackendError, check_backend, load_backend

    try:
        check_backend(args.backend, args.model)
    except BackendError as err:
        print(f"lapa-server: error: {err}", file=sys.stderr)
        return 2

    import uvicorn

    max_body = int(args.max_body_mb * (1 << 20))
    config = ServiceConfig(
        limits=InputLimits(max_image_side=args.max_image_side, min_image_side=args.min_image_side,
                           max_instruction_chars=args.max_instruction_chars,
                           resize=not args.no_resize),
        warmup_steps=args.warmup, inline_model_max_ms=args.inline_model_ms, replay_ttl_s=args.replay_ttl,
        max_body_bytes=max_body)
    factory: Callable[[], Policy] = functools.partial(load_backend, args.backend, args.model, args.threads)
    intent_factory = None
    if args.intent:
        intent_factory = functools.partial(_load_intent, args.intent)
    service = PolicyService(factory, config, Metrics(), intent_factory=intent_factory)
    holder: dict[str, uvicorn.Server] = {}

    def stop() -> None:
        holder["server"].should_exit = True

    app = create_app(service, api_key=api_key, on_load_failed=stop)
    uv_config = uvicorn.Config(app, host=args.host, port=args.port, ws_per_message_deflate=False,
                               ws_max_size=max_body, log_level=args.log_level, access_log=args.access_log,
                               lifespan="on", timeout_graceful_shutdown=3)
    server = holder["server"] = uvicorn.Server(uv_config)
    refused = make_thread_realtime(args.rt_priority)  # this thread runs the event loop and starts the others
    if refused:
        log.warning("the server stays at normal priority: %s", refused)
    elif args.rt_priority:
        log.info("SCHED_FIFO priority %d", args.rt_priority)
    server.run()
    if service.status == "failed":
        print(f"lapa-server: error: the policy did not load: {service.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
