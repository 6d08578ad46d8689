"""The console's web app: the page, its JSON API and the live WebSocket (FastAPI).

  GET  /                       the page (static/index.html); /static/* its scripts and style
  GET  /healthz                the process is up
  GET  /api/state              controller state, instruction, last stop reason, recording, sizes
  GET  /api/vocabulary         the command box's suggestions (the recogniser's sentences)
  POST /api/instruction        {"text": "..."} -> /lapa/instruction
  POST /api/command/{name}     start | stop | home | estop -> the policy node's Trigger services
  POST /api/speech             a WAV upload (push-to-talk) -> the recognition, not sent
  POST /api/recording          {"on": true|false} -> LeRobot v3 episodes of what the robot does
  POST /api/intent             {"text": "..."} -> the imagined frames for the current image (when served)
  WS   /ws                     binary: 0x01 + camera JPEG, 0x02 + PNG of the policy's input;
                               text: JSON telemetry (state, new steps, control rate, recording)

The page and its assets carry no data and load without a key; every /api route and /ws need the
API key whenever one is set (policy_server/security.py: header, bearer or ?api_key=). Bad input is
a 4xx with {"error", "status"}.
"""

from __future__ import annotations

import asyncio
import json
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.websockets import WebSocketDisconnect

from lapa.vocabulary import parse_instruction
from lapa_ros.console.recorder import EpisodeRecorder, fit_image
from lapa_ros.console.speech import MAX_UPLOAD_BYTES, BrowserSpeech, SpeechInputError, SpeechUnavailable
from lapa_ros.console.telemetry import Telemetry
from lapa_ros.console.vocabulary import suggestions
from policy_server.http_body import read_limited_body
from policy_server.security import OPEN_PATHS, ApiKeyMiddleware

STATIC_FILES = ("index.html", "console.css", "console.js", "plots.js", "talk.js")
COMMANDS = ("start", "stop", "home", "estop")
MAX_INSTRUCTION_CHARS = 512
MAX_JSON_BYTES = 16 << 10
CAMERA_FPS = 15.0
TELEMETRY_HZ = 5.0
FRAME_CAMERA, FRAME_POLICY = 1, 2


class RobotLink(Protocol):
    """What the page drives: the ROS side (node.py) or anything that does the same."""

    def say(self, text: str) -> None: ...

    def command(self, name: str) -> tuple[bool, str]: ...  # one of COMMANDS

    def policy_image_hw(self) -> tuple[int, int] | None: ...


class IntentSource(Protocol):
    """The intent preview (intent.py): imagined frames for an image and an instruction."""

    def available(self) -> bool: ...

    def intent(self, image: np.ndarray, instruction: str) -> dict[str, Any]: ...


class ConsoleError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def check_instruction(value: Any) -> str:
    if not isinstance(value, str):
        raise ConsoleError(422, f"'text' must be a string, got {type(value).__name__}")
    text = " ".join(value.split())
    if not text:
        raise ConsoleError(422, "'text' is empty: type an instruction, e.g. pick up the red block")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise ConsoleError(422, f"'text' has {len(text)} characters; at most {MAX_INSTRUCTION_CHARS}")
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise ConsoleError(422, "'text' contains control characters")
    return text


async def read_json(request: Request) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ConsoleError(415, f"send application/json, not {media or 'no Content-Type'!r}")
    body = await read_limited(request, MAX_JSON_BYTES)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConsoleError(400, f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConsoleError(422, "the body must be a JSON object")
    return data


async def read_limited(request: Request, limit: int) -> bytes:
    return await read_limited_body(request, limit, ConsoleError)


class FrameCache:
    """The newest camera frame encoded once for every client: JPEG of the full image, PNG of the
    policy's input (resized as the server resizes)."""

    def __init__(self) -> None:
        self._seq = -1
        self._encoded: dict[int, bytes] = {}

    def encoded(self, seq: int, frame: np.ndarray, policy_hw: tuple[int, int] | None) -> dict[int, bytes]:
        if seq != self._seq:
            import cv2

            bgr = np.ascontiguousarray(frame[:, :, ::-1])
            out = {FRAME_CAMERA: cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()}
            if policy_hw is not None:
                out[FRAME_POLICY] = cv2.imencode(".png", fit_image(bgr, policy_hw))[1].tobytes()
            self._seq, self._encoded = seq, out
        return self._encoded


def create_app(robot: RobotLink, telemetry: Telemetry, recorder: EpisodeRecorder, *,
               speech: BrowserSpeech | None = None, intent: IntentSource | None = None,
               api_key: str | None = None, confirm_before_motion: bool = False) -> Any:
    app = FastAPI(title="lapa operator console", docs_url=None, redoc_url=None, openapi_url=None)
    static = files("lapa_ros.console").joinpath("static")
    frames = FrameCache()
    speech = speech or BrowserSpeech()
    stopping = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lapa-console-stop")

    @app.exception_handler(ConsoleError)
    async def console_error(_request: Request, err: ConsoleError) -> JSONResponse:
        return error_response(err.status, err.message)

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(str(static.joinpath("index.html")), media_type="text/html")

    @app.get("/static/{name}")
    async def asset(name: str) -> Response:
        if name not in STATIC_FILES:
            return error_response(404, f"no asset {name!r}")
        media = {"css": "text/css", "js": "text/javascript", "html": "text/html"}[name.rsplit(".", 1)[1]]
        return FileResponse(str(static.joinpath(name)), media_type=media)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def state() -> dict[str, Any]:
        hw = robot.policy_image_hw()
        return {**telemetry.summary(), "policy_image_size": None if hw is None else list(hw),
                "recording": recorder.status(), "control_rate_hz": telemetry.control_rate_hz(),
                "confirm_before_motion": confirm_before_motion,
                "intent_available": intent is not None and intent.available()}

    @app.get("/api/state")
    async def get_state() -> JSONResponse:
        return JSONResponse(state())

    @app.get("/api/vocabulary")
    async def vocabulary() -> JSONResponse:
        return JSONResponse({"suggestions": list(suggestions())})

    @app.post("/api/instruction")
    async def instruction(request: Request) -> JSONResponse:
        data = await read_json(request)
        text = check_instruction(data.get("text"))
        await asyncio.to_thread(robot.say, text)
        task = parse_instruction(text)
        return JSONResponse({"sent": text, "task": task.name if task else None})

    @app.post("/api/command/{name}")
    async def command(name: str) -> JSONResponse:
        if name not in COMMANDS:
            raise ConsoleError(404, f"unknown command {name!r}; one of {list(COMMANDS)}")
        t0 = time.perf_counter()
        if name in ("stop", "estop"):  # own threads: a stop never queues behind moves home or uploads
            ok, message = await asyncio.get_running_loop().run_in_executor(stopping, robot.command, name)
        else:
            ok, message = await asyncio.to_thread(robot.command, name)
        elapsed_ms = 1e3 * (time.perf_counter() - t0)
        if not ok:
            return JSONResponse({"error": message, "status": 503, "command": name}, status_code=503)
        return JSONResponse({"ok": True, "command": name, "message": message, "elapsed_ms": elapsed_ms})

    @app.post("/api/speech")
    async def recognise(request: Request) -> JSONResponse:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media not in ("audio/wav", "audio/x-wav", "audio/wave"):
            raise ConsoleError(415, f"send audio/wav (16-bit PCM), not {media or 'no Content-Type'!r}")
        body = await read_limited(request, MAX_UPLOAD_BYTES)
        try:
            result = await asyncio.to_thread(speech.recognize_wav, body)
        except SpeechInputError as e:
            raise ConsoleError(400, str(e)) from None
        except SpeechUnavailable as e:
            raise ConsoleError(503, str(e)) from None
        return JSONResponse(result)

    @app.post("/api/recording")
    async def recording(request: Request) -> JSONResponse:
        data = await read_json(request)
        on = data.get("on")
        if not isinstance(on, bool):
            raise ConsoleError(422, "'on' must be true or false")
        return JSONResponse(recorder.start() if on else recorder.stop())

    @app.post("/api/intent")
    async def imagine(request: Request) -> JSONResponse:
        data = await read_json(request)
        text = check_instruction(data.get("text"))
        if intent is None or not intent.available():
            raise ConsoleError(404, "no intent preview: the policy server serves no latent-action head and LAQ "
                                    "decoder (lapa-server --intent DIR)")
        _, frame = telemetry.newest_frame()
        if frame is None:
            raise ConsoleError(409, "no camera image yet")
        try:
            result = await asyncio.to_thread(intent.intent, frame, text)
        except ConnectionError as e:
            raise ConsoleError(503, f"intent preview unavailable: {e}") from None
        except ValueError as e:
            raise ConsoleError(422, str(e)) from None
        return JSONResponse(result)

    @app.websocket("/ws")
    async def live(ws: WebSocket) -> None:
        await ws.accept()
        try:
            await _live(ws, robot, telemetry, recorder, frames, state)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the page went away (RuntimeError: sent after the close)

    open_paths = OPEN_PATHS | {"/"} | {f"/static/{name}" for name in STATIC_FILES}
    return ApiKeyMiddleware(app, api_key, open_paths=frozenset(open_paths))


async def _live(ws: WebSocket, robot: RobotLink, telemetry: Telemetry, recorder: EpisodeRecorder,
                frames: FrameCache, state) -> None:
    """Push camera frames (at most CAMERA_FPS) and telemetry (TELEMETRY_HZ) until the page goes away."""
    sent_frame, sent_step = 0, 0
    next_telemetry = 0.0
    receiver = asyncio.create_task(ws.receive())
    try:
        while True:
            if receiver.done():
                if receiver.result()["type"] == "websocket.disconnect":
                    return
                receiver = asyncio.create_task(ws.receive())  # clients send nothing we need
            seq, frame = telemetry.newest_frame()
            if frame is not None and seq != sent_frame:
                for tag, data in frames.encoded(seq, frame, robot.policy_image_hw()).items():
                    await ws.send_bytes(bytes([tag]) + data)
                sent_frame = seq
            now = time.monotonic()
            if now >= next_telemetry:
                steps = telemetry.steps_since(sent_step)
                if steps:
                    sent_step = steps[-1].seq
                await ws.send_text(json.dumps({"type": "telemetry", "state": state(), "now": time.time(),
                                               "steps": [s.to_dict() for s in steps]}))
                next_telemetry = now + 1.0 / TELEMETRY_HZ
            await asyncio.sleep(1.0 / CAMERA_FPS)
    finally:
        receiver.cancel()
