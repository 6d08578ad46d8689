"""The transport-independent core: one policy, one model thread, request-id deduplication.

Model calls run on a single worker thread (the one model lock: calls never overlap), never on the
event loop, so decoding, encoding, health checks and other clients' I/O carry on while the model
runs, and a request waits only for the model calls queued before it (FIFO).

Request ids and retries (the client's contract):
- every request may carry a `request_id` (string or integer) chosen by the client; a retry of
  the same request must reuse it;
- a request whose id is being processed waits for that same model call and gets its answer;
- a request whose id was answered less than `replay_ttl_s` ago gets the same reply again
  (`"replayed": true`) without a new model call: a reply lost with a dropped connection is
  recovered, and the model never runs twice for one request;
- an id answered longer ago, but still among the last `remembered_ids`, is refused with 409:
  the client must not act on a stale answer and should send a new request;
- an id reused with a different observation is refused with 409 (two clients counting 1, 2, 3
  would otherwise receive each other's actions);
- failures are not remembered: a retry after an error runs the model again;
- the memory is per server process: after a restart an id is new.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lapa.action import fake_state
from lapa.policy_protocol import REPLY_ACTIONS, REPLY_MODEL_MS, Policy, PolicyInputError
from policy_server.metrics import Metrics
from policy_server.observation import ActRequest, InputLimits, RequestError, parse_request

log = logging.getLogger("policy_server")

ACTION_DIM = 7
ACTION_SPACE = {
    "names": ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"],
    "units": ["m", "m", "m", "rad", "rad", "rad", "1"],
    "frame": "base",
    "rotation": "R_next = R_delta @ R_now (roll, pitch, yaw deltas in the base frame)",
    "gripper": "absolute target: 1.0 open, 0.0 closed",
}
PROTOCOL = "lapa-policy/1"


@dataclass
class _Entry:
    fingerprint: int
    future: asyncio.Future
    done_at: float | None = None


@dataclass
class ServiceConfig:
    limits: InputLimits = field(default_factory=InputLimits)
    warmup_steps: int = 3
    # A model whose warm-up calls take at most this long (median, ms) runs on the event loop, as
    # openpi's server runs its policy: no hand-off to the model thread and back (~0.3 ms a call, and
    # a call on a thread that was just running is faster than on one just woken). A slower model runs
    # on the model thread, so the loop keeps answering health checks and parsing requests meanwhile.
    # 0: always on the model thread.
    inline_model_max_ms: float = 10.0
    replay_ttl_s: float = 30.0
    remembered_ids: int = 4096
    max_body_bytes: int = 16 << 20


class PolicyService:
    """Loads the policy once (`load`, blocking, off the event loop), then answers `act` calls."""

    def __init__(self, factory: Callable[[], Policy], config: ServiceConfig, metrics: Metrics,
                 intent_factory: Callable[[], Any] | None = None) -> None:
        self.factory = factory
        # the intent preview (lapa/policy/intent.py: `imagine(image, instruction)` and `metadata`), if served
        self.intent_factory = intent_factory
        self.intent_model: Any = None
        self.intent_error: str | None = None
        self.config = config
        self.metrics = metrics
        self.policy: Policy | None = None
        self.status = "loading"  # loading -> ready | failed
        self.error: str | None = None
        self.metadata: dict[str, Any] = {}
        self.image_size: tuple[int, int] = (0, 0)
        self.model_on_event_loop = False  # decided after the warm-up (ServiceConfig.inline_model_max_ms)
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._decode_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        self._recent: OrderedDict[Any, _Entry] = OrderedDict()

    # ------------------------------------------------------------------------------- lifecycle

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def load(self) -> None:
        """Build the policy and warm it up; sets `status`. Runs on the model thread."""
        try:
            t0 = time.perf_counter()
            policy = self.factory()
            meta = dict(policy.metadata)
            h, w = (int(v) for v in meta["image_size"])
            self.image_size = (h, w)
            warmup_ms = self._warm_up(policy, int(meta.get("state_dim") or 0), "wrist" in meta.get("cameras", ()))
            limit_ms = self.config.inline_model_max_ms
            self.model_on_event_loop = warmup_ms is not None and 0 < limit_ms and warmup_ms <= limit_ms
            import cv2  # noqa: F401 - JPEG/PNG decoding and resizing: imported now, not on the first request
            if self.intent_factory is not None:
                meta.update(self._load_intent())
            self.metadata = self._server_metadata(meta)
            self.metadata["model_on_event_loop"] = self.model_on_event_loop
            self.policy = policy
            self.status = "ready"
            self.metrics.ready.set(1)
            log.info("policy ready in %.1f s: %s", time.perf_counter() - t0,
                     {k: self.metadata.get(k) for k in ("backend", "model_hash", "image_size", "chunk_size",
                                                        "model_on_event_loop")})
        except Exception as err:  # noqa: BLE001 - reported through /readyz and the exit code
            self.status, self.error = "failed", f"{type(err).__name__}: {err}"
            log.exception("loading the policy failed")

    def _load_intent(self) -> dict[str, Any]:
        """The intent preview is an extra: when it does not load, the policy is served without it."""
        try:
            self.intent_model = self.intent_factory()
            return {"intent": dict(self.intent_model.metadata)}
        except Exception as err:  # noqa: BLE001 - reported in the metadata, on /v1/intent and in the log
            log.exception("loading the intent preview failed; serving the policy without it")
            self.intent_error = f"{type(err).__name__}: {err}"
            return {"intent_error": self.intent_error}

    async def start_loading(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._model_thread, self.load)

    def close(self) -> None:
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._decode_threads.shutdown(wait=False, cancel_futures=True)

    def _warm_up(self, policy: Policy, state_dim: int = 0, wrist: bool = False) -> float | None:
        """A few infer calls on random observations; with a plausible random state for a model that
        takes the proprio state (metadata `state_dim` 8), which refuses an observation without one,
        and a hand image for a model with cameras [scene, wrist]. Returns the median time (ms) of the
        calls after the first (None without warm-up calls)."""
        rng = np.random.default_rng(0)
        h, w = self.image_size
        times_ms = []
        for i in range(self.config.warmup_steps):
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            obs: dict[str, Any] = {"image": image, "instruction": f"warm up {i % 2}"}
            if state_dim:
                obs["state"] = fake_state(1, seed=i, dim=state_dim)[0]
            if wrist:
                obs["wrist_image"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            t0 = time.perf_counter()
            _check_actions(policy.infer(obs))
            times_ms.append(1e3 * (time.perf_counter() - t0))
        return float(np.median(times_ms[1:] or times_ms)) if times_ms else None

    def _server_metadata(self, meta: dict[str, Any]) -> dict[str, Any]:
        limits = self.config.limits
        server = {
            "protocol": PROTOCOL,
            "image_size": list(self.image_size),
            "action_dim": ACTION_DIM,
            "action_space": ACTION_SPACE,
            "image_formats": ["raw uint8 (H, W, 3) RGB", "jpeg", "png"],
            "resize": limits.resize,
            "limits": {"max_body_bytes": self.config.max_body_bytes, "max_image_side": limits.max_image_side,
                       "min_image_side": limits.min_image_side,
                       "max_instruction_chars": limits.max_instruction_chars,
                       "max_request_id_chars": limits.max_request_id_chars},
            "request_ids": {"replay_ttl_s": self.config.replay_ttl_s, "remembered_ids": self.config.remembered_ids},
        }
        return _plain({**meta, **server})

    # ------------------------------------------------------------------------------- requests

    def check_ready(self) -> None:
        if self.status != "ready":
            raise RequestError(503, f"policy not ready ({self.status}{': ' + self.error if self.error else ''})")

    async def parse(self, msg: Any, *, text_images: bool = False) -> ActRequest:
        """Validate a decoded request; JPEG/PNG or list images are decoded on a worker thread."""
        self.check_ready()
        image = msg.get("image") if isinstance(msg, dict) else None
        if isinstance(image, np.ndarray) or image is None:
            return parse_request(msg, self.image_size, self.config.limits, text_images=text_images)
        return await asyncio.get_running_loop().run_in_executor(
            self._decode_threads, lambda: parse_request(msg, self.image_size, self.config.limits,
                                                        text_images=text_images))

    async def act(self, request: ActRequest) -> dict[str, Any]:
        """The reply for one request: actions, request_id, model_ms, queue_ms, replayed (no server_ms yet)."""
        self.check_ready()
        if not request.client_id:
            return await self._run(request)
        key = (type(request.request_id).__name__, request.request_id)
        entry = self._recent.get(key)
        if entry is not None:
            return await self._replay(request, entry)
        # The model call runs as its own task, shielded: a caller that goes away (a dropped
        # connection) does not cancel it, and the retry that follows gets its answer.
        task = asyncio.ensure_future(self._run(request))
        entry = _Entry(request.fingerprint, task)
        self._remember(key, entry)
        task.add_done_callback(lambda t: self._finished(key, entry, t))
        return await asyncio.shield(task)

    def _finished(self, key: Any, entry: _Entry, task: asyncio.Future) -> None:
        if task.cancelled() or task.exception() is not None:  # failures are not remembered
            if self._recent.get(key) is entry:
                del self._recent[key]
        else:
            entry.done_at = time.monotonic()

    async def _replay(self, request: ActRequest, entry: _Entry) -> dict[str, Any]:
        rid = request.request_id
        if entry.fingerprint != request.fingerprint:
            raise RequestError(409, f"request id {rid!r} was already used for a different observation", rid)
        if entry.done_at is not None and time.monotonic() - entry.done_at > self.config.replay_ttl_s:
            age = time.monotonic() - entry.done_at
            raise RequestError(409, f"request id {rid!r} was answered {age:.0f} s ago; send a new request", rid)
        reply = await asyncio.shield(entry.future)
        self.metrics.replayed.inc()
        return {**reply, "replayed": True}

    def _remember(self, key: Any, entry: _Entry) -> None:
        self._recent[key] = entry
        while len(self._recent) > self.config.remembered_ids:
            old_key, old = next(iter(self._recent.items()))
            if not old.future.done():  # never forget a request still running
                self._recent.move_to_end(old_key)
                break
            del self._recent[old_key]

    async def _run(self, request: ActRequest) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        submitted = time.perf_counter()
        try:
            if self.model_on_event_loop:
                out, started, finished = self._infer(request.obs)
            else:
                out, started, finished = await loop.run_in_executor(self._model_thread, self._infer, request.obs)
        except RequestError as err:
            err.request_id = request.request_id
            raise
        queue_s, model_s = started - submitted, finished - started
        self.metrics.observe_stage("queue", queue_s)
        self.metrics.observe_stage("model", model_s)
        self.metrics.model_calls.inc()
        model_ms = out.get(REPLY_MODEL_MS)
        return {
            "request_id": request.request_id,
            "actions": out[REPLY_ACTIONS],
            "model_ms": float(model_ms) if isinstance(model_ms, (int, float)) else 1e3 * model_s,
            "queue_ms": 1e3 * queue_s,
            "replayed": False,
        }

    def _infer(self, obs: dict[str, Any]) -> tuple[dict[str, Any], float, float]:
        started = time.perf_counter()
        try:
            out = self.policy.infer(obs)
        except PolicyInputError as err:
            raise RequestError(422, str(err)) from err
        except Exception as err:
            log.exception("policy.infer failed")
            raise RequestError(500, f"model error: {type(err).__name__}: {err}") from err
        finished = time.perf_counter()
        _check_actions(out)
        return out, started, finished

    async def intent(self, request: ActRequest) -> dict[str, Any]:
        """The intent preview of an observation: latent codes (T, L) and imagined frames (T, h, w, 3)."""
        self.check_ready()
        if self.intent_model is None:
            if self.intent_error:
                raise RequestError(404, f"the intent preview did not load: {self.intent_error}")
            raise RequestError(404, "this server has no intent preview: start it with --intent DIR (a latent-action "
                                    "VLA and the LAQ decoder, lapa/policy/intent.py)")
        obs = request.obs

        def run() -> dict[str, Any]:
            try:
                return self.intent_model.imagine(obs["image"], obs["instruction"])
            except Exception as err:
                log.exception("intent preview failed")
                raise RequestError(500, f"intent preview error: {type(err).__name__}: {err}") from err

        return await asyncio.get_running_loop().run_in_executor(self._model_thread, run)

    async def reset(self) -> None:
        self.check_ready()
        if self.model_on_event_loop:  # on the thread that runs the policy's calls
            self.policy.reset()
            return
        await asyncio.get_running_loop().run_in_executor(self._model_thread, self.policy.reset)


def _check_actions(out: Any) -> None:
    actions = out.get(REPLY_ACTIONS) if isinstance(out, dict) else None
    if not isinstance(actions, np.ndarray) or actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        shape = getattr(actions, "shape", type(actions).__name__)
        raise RequestError(500, f"model returned actions of shape {shape}, expected (K, {ACTION_DIM})")
    if actions.dtype != np.float32:
        out[REPLY_ACTIONS] = actions = actions.astype(np.float32)
    if not np.all(np.isfinite(actions)):
        raise RequestError(500, "model returned non-finite actions")


def _plain(value: Any) -> Any:
    """Metadata as msgpack/JSON-friendly values (tuples and numpy values to lists and numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # paths, devices, enums: as text rather than an unserialisable reply
