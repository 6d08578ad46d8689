"""A small real Policy (numpy, deterministic) and a real policy server running it on loopback.

`FakePolicy`'s actions depend on the image mean and a hash of the instruction, so tests can check
that the right observation reached the model; it caches instruction embeddings (LRU) as the real
backends do, and can sleep to stand in for a slow model. The server runs as
`python -m policy_server.app --backend policy_fakes:make_policy`, configured through LAPA_FAKE_*
environment variables.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from lapa.policy_protocol import check_observation

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
FAIL_INSTRUCTION = "raise an error"  # infer raises RuntimeError -> the server answers 500
NAN_INSTRUCTION = "return nan"  # infer returns NaN actions -> the server answers 500


class FakePolicy:
    """Deterministic numpy policy: `actions[k] = f(image mean, instruction hash, k)`."""

    def __init__(self, image_size: tuple[int, int] = (224, 224), chunk_size: int = 4, control_hz: float = 10.0,
                 delay_s: float = 0.0, cache_size: int = 64) -> None:
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.chunk_size = chunk_size
        self.control_hz = control_hz
        self.delay_s = delay_s
        self.cache_size = cache_size
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()
        self.embedding_misses = 0
        self.calls = 0
        self.resets = 0

    @property
    def metadata(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "chunk_size": self.chunk_size, "action_dim": 7,
                "control_hz": self.control_hz, "model_hash": "fake-numpy-v1", "backend": "fake-numpy"}

    def embed(self, instruction: str) -> np.ndarray:
        """Stands in for the text encoder: computed once per instruction, kept in an LRU cache."""
        if instruction in self._embeddings:
            self._embeddings.move_to_end(instruction)
            return self._embeddings[instruction]
        self.embedding_misses += 1
        digest = hashlib.sha256(instruction.encode()).digest()
        emb = np.frombuffer(digest[:7], np.uint8).astype(np.float32) / 255.0 - 0.5
        self._embeddings[instruction] = emb
        while len(self._embeddings) > self.cache_size:
            self._embeddings.popitem(last=False)
        return emb

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        image, instruction, state = check_observation(obs, self.image_size)
        if instruction == FAIL_INSTRUCTION:
            raise RuntimeError("the fake model failed on purpose")
        self.calls += 1
        actions = expected_actions(float(image.mean()), self.embed(instruction), self.chunk_size)
        if state is not None:
            actions[:, :3] += 1e-3 * state[:3]
        if instruction == NAN_INSTRUCTION:
            actions[0, 0] = np.nan
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"actions": actions, "model_ms": 1e3 * (time.perf_counter() - t0)}

    def reset(self) -> None:
        self.resets += 1


def expected_actions(image_mean: float, embedding: np.ndarray, chunk_size: int) -> np.ndarray:
    m = image_mean / 255.0
    k = np.arange(1, chunk_size + 1, dtype=np.float32)[:, None]  # (K, 1)
    actions = 0.01 * (m - 0.5) * k + 0.001 * embedding[None, :]  # (K, 7)
    actions[:, 6] = 1.0 if m > 0.5 else 0.0
    return actions.astype(np.float32)


def actions_for(image: np.ndarray, instruction: str, chunk_size: int = 4) -> np.ndarray:
    """What FakePolicy answers for this (already model-sized) image and instruction."""
    return expected_actions(float(image.mean()), FakePolicy().embed(instruction), chunk_size)


def make_policy(model_dir: str | None = None, threads: int | None = None) -> FakePolicy:
    """The server-side factory (`--backend policy_fakes:make_policy`), set up by LAPA_FAKE_* variables."""
    if os.environ.get("LAPA_FAKE_LOAD_FAIL"):
        raise RuntimeError("the fake model failed to load on purpose")
    time.sleep(float(os.environ.get("LAPA_FAKE_LOAD_S", "0")))
    size = int(os.environ.get("LAPA_FAKE_IMAGE_SIZE", "224"))
    return FakePolicy(image_size=(size, size), chunk_size=int(os.environ.get("LAPA_FAKE_CHUNK", "4")),
                      delay_s=float(os.environ.get("LAPA_FAKE_DELAY_MS", "0")) / 1e3)


# ------------------------------------------------------------------------------ a real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m policy_server.app` in a subprocess on loopback; `stop()` always ends it."""

    def __init__(self, log_path: Path, *, port: int | None = None, host: str = "127.0.0.1",
                 backend: str = "policy_fakes:make_policy", args: list[str] | None = None,
                 env: dict[str, str] | None = None, api_key: str | None = None) -> None:
        self.host, self.port = host, port or free_port()
        self.log_path = log_path
        self.api_key = api_key
        self.cmd = [sys.executable, "-m", "policy_server.app", "--backend", backend, "--host", host,
                    "--port", str(self.port), "--warmup", "1", "--log-level", "warning", *(args or [])]
        if api_key:
            self.cmd += ["--api-key", api_key]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT)]),
                    "OMP_NUM_THREADS": "1", **(env or {})}
        if "LAPA_API_KEY" not in (env or {}):
            self.env.pop("LAPA_API_KEY", None)  # a key in the caller's environment would change the test
        self.proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def start(self, wait_ready: bool = True, timeout_s: float = 30.0) -> ServerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        if wait_ready:
            self.wait_ready(timeout_s)
        return self

    def running(self, timeout_s: float = 30.0) -> Iterator[ServerProcess]:
        """Start, yield and always stop it: `yield from ServerProcess(...).running()` makes a fixture."""
        try:
            yield self.start(timeout_s=timeout_s)
        finally:
            self.stop()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                req = urllib.request.Request(self.http_url + "/readyz", headers=headers)
                with urllib.request.urlopen(req, timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """Crash it (SIGKILL): no graceful shutdown, connections drop."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()


def openpi_packb(obj) -> bytes:
    """Byte for byte what openpi_client.msgpack_numpy.packb writes."""
    def pack_array(o):
        if isinstance(o, (np.ndarray, np.generic)) and o.dtype.kind in ("V", "O", "c"):
            raise ValueError(f"Unsupported dtype: {o.dtype}")
        if isinstance(o, np.ndarray):
            return {b"__ndarray__": True, b"data": o.tobytes(), b"dtype": o.dtype.str, b"shape": o.shape}
        if isinstance(o, np.generic):
            return {b"__npgeneric__": True, b"data": o.item(), b"dtype": o.dtype.str}
        return o

    return msgpack.packb(obj, default=pack_array)


def openpi_unpackb(data: bytes):
    """openpi_client.msgpack_numpy.unpackb."""
    def unpack_array(o):
        if b"__ndarray__" in o:
            return np.ndarray(buffer=o[b"data"], dtype=np.dtype(o[b"dtype"]), shape=o[b"shape"])
        if b"__npgeneric__" in o:
            return np.dtype(o[b"dtype"]).type(o[b"data"])
        return o

    return msgpack.unpackb(data, object_hook=unpack_array)


def read_metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0.0 when the series does not exist yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
