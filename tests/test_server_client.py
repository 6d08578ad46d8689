"""policy_server.client against a real server: sync and async, HTTP and WebSocket, retries, restarts."""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from policy_fakes import REPO_ROOT, ServerProcess, actions_for, free_port, read_metric

from policy_server import codec
from policy_server.client import AsyncPolicyClient, PolicyClient, PolicyServerError, PolicyUnavailableError

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from ServerProcess(tmp_path_factory.mktemp("server") / "server.log").running()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    env = {"LAPA_FAKE_DELAY_MS": "400"}
    yield from ServerProcess(tmp_path_factory.mktemp("slow") / "server.log", env=env).running()


def image(seed=0, h=224, w=224):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def model_calls(srv) -> float:
    return read_metric(httpx.get(srv.http_url + "/metrics").text, "lapa_server_model_calls_total")


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_sync_client(server, scheme):
    with PolicyClient(f"{scheme}://127.0.0.1:{server.port}") as client:
        assert client.metadata["chunk_size"] == 4 and client.metadata["control_hz"] == 10.0
        img = image()
        reply = client.act(img, "pick up the red block", state=np.zeros(8))
        assert reply.actions.shape == (4, 7) and reply.actions.dtype == np.float32
        np.testing.assert_allclose(reply.actions, actions_for(img, "pick up the red block"), atol=1e-6)
        assert reply.model_ms > 0 and reply.server_ms >= reply.model_ms and reply.round_trip_ms >= reply.server_ms
        assert reply.attempts == 1 and not reply.replayed and len(reply.request_id) == 32
        assert client.act(img, "x", request_id="mine").request_id == "mine"
        client.reset()


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_compressed_images(server, image_format):
    import cv2

    img = cv2.GaussianBlur(image(), (9, 9), 3)
    with PolicyClient(server.ws_url, image_format=image_format, jpeg_quality=95) as client:
        reply = client.act(img, "x")
    np.testing.assert_allclose(reply.actions, actions_for(img, "x"), atol=1e-4)


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_async_client(server, scheme):
    async def main():
        async with AsyncPolicyClient(f"{scheme}://127.0.0.1:{server.port}") as client:
            assert client.metadata["image_size"] == [224, 224]
            replies = await asyncio.gather(*(client.act(image(i), f"task {i}") for i in range(4)))
            for i, reply in enumerate(replies):
                np.testing.assert_allclose(reply.actions, actions_for(image(i), f"task {i}"), atol=1e-6)
            await client.reset()

    asyncio.run(main())


def test_request_errors_are_raised_not_retried(server):
    with PolicyClient(server.ws_url, retries=5) as client:
        before = model_calls(server)
        with pytest.raises(PolicyServerError) as info:
            client.act(np.zeros((224, 224), np.uint8), "x")  # not (H, W, 3)
        assert info.value.status == 422 and "(H, W, 3)" in info.value.message
        assert client.act(image(), "still connected").actions.shape == (4, 7)
        assert model_calls(server) == before + 1
    with PolicyClient(server.http_url) as client, pytest.raises(PolicyServerError) as info:
        client.act(image(), "x" * 1000)
    assert info.value.status == 422


def test_unavailable_server_gives_up_with_backoff():
    port = free_port()
    for scheme in ("ws", "http"):
        client = PolicyClient(f"{scheme}://127.0.0.1:{port}", retries=3, backoff_s=0.05, max_backoff_s=0.1)
        t0 = time.perf_counter()
        with pytest.raises(PolicyUnavailableError, match="after 4 attempts"):
            client.act(image(), "x")
        assert 0.05 < time.perf_counter() - t0 < 5


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_timeout_retry_is_answered_once_from_the_same_model_call(slow_server, scheme):
    """The first attempt times out (model takes 0.4 s, timeout 0.25 s); the retry reuses the request
    id, joins the running call and gets its answer: one model call, one reply."""
    before = model_calls(slow_server)
    with PolicyClient(f"{scheme}://127.0.0.1:{slow_server.port}", timeout_s=0.25, retries=6, backoff_s=0.02,
                      max_backoff_s=0.05) as client:
        img = image(7)
        reply = client.act(img, "slow", request_id=f"slow-{scheme}")
        assert reply.attempts >= 2 and reply.replayed and reply.request_id == f"slow-{scheme}"
        np.testing.assert_allclose(reply.actions, actions_for(img, "slow"), atol=1e-6)
        assert model_calls(slow_server) == before + 1
        fresh = client.act(img, "slow", timeout_s=5)  # a new request: a new id, a new model call
        assert not fresh.replayed and fresh.attempts == 1
        assert model_calls(slow_server) == before + 2


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_server_restart_during_a_session(tmp_path, scheme):
    """Kill the server (SIGKILL) while a request is in the model and start a new one on the same port:
    the client reconnects with backoff, fetches the metadata again, and every call gets exactly one
    reply, for its own request id."""
    port = free_port()
    env = {"LAPA_FAKE_DELAY_MS": "300"}
    first = ServerProcess(tmp_path / "first.log", port=port, env=env).start()
    second = ServerProcess(tmp_path / "second.log", port=port, env=env)
    ids = [f"step-{i}" for i in range(8)]
    replies: dict[str, list] = {rid: [] for rid in ids}
    errors: list[BaseException] = []
    third_sent = threading.Event()

    def session() -> None:
        try:
            with PolicyClient(f"{scheme}://127.0.0.1:{port}", timeout_s=5, retries=60, backoff_s=0.05,
                              max_backoff_s=0.3) as client:
                for i, rid in enumerate(ids):
                    if i == 3:
                        third_sent.set()
                    reply = client.act(image(i), "restart me", request_id=rid)
                    replies[rid].append(reply)
                    assert client.metadata["chunk_size"] == 4
        except BaseException as err:  # noqa: BLE001 - reported by the test thread
            errors.append(err)

    try:
        robot = threading.Thread(target=session)
        robot.start()
        assert third_sent.wait(20)
        time.sleep(0.1)  # the fourth request is in the 300 ms model call
        first.kill()
        time.sleep(0.3)
        second.start()
        robot.join(60)
        assert not robot.is_alive() and not errors, errors
        assert all(len(r) == 1 for r in replies.values()), {k: len(v) for k, v in replies.items()}
        for i, rid in enumerate(ids):
            reply = replies[rid][0]
            assert reply.request_id == rid
            np.testing.assert_allclose(reply.actions, actions_for(image(i), "restart me"), atol=1e-6)
        assert replies["step-3"][0].attempts >= 2  # the one that was in flight was retried
        assert model_calls(second) == len(ids) - 3  # the new server ran each remaining request once
    finally:
        first.stop()
        second.stop()


def test_client_imports_no_torch():
    code = ("import sys, numpy as np; import policy_server.client as c; "
            "cl = c.PolicyClient('ws://127.0.0.1:1'); cl.encode_request(np.zeros((4, 4, 3), np.uint8), 'x'); "
            "heavy = sorted(m for m in ('torch', 'fastapi', 'uvicorn', 'starlette', 'cv2', 'lapa', 'httpx') "
            "if m in sys.modules); print(heavy); assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class _DroppingHandler(http.server.BaseHTTPRequestHandler):
    """Answers like lapa-server; with `drop` it closes the connection after each reply without saying
    so, as uvicorn does to a keep-alive connection left idle; `reply_bytes` pads the reply."""

    protocol_version = "HTTP/1.1"
    drop = True
    reply_bytes = 0

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = self.drop

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._send(b'{"chunk_size": 4, "action_dim": 7}', "application/json")

    def do_POST(self) -> None:  # noqa: N802
        msg = codec.unpackb(self.rfile.read(int(self.headers["Content-Length"])))
        reply = {"request_id": msg["request_id"], "actions": np.zeros((4, 7), np.float32), "model_ms": 0.1,
                 "pad": b"x" * self.reply_bytes}
        self._send(codec.packb(reply), "application/msgpack")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def dropping_server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DroppingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    _DroppingHandler.drop, _DroppingHandler.reply_bytes = True, 0


def test_http_client_reopens_a_connection_the_server_closed_without_a_retry(dropping_server):
    with PolicyClient(f"http://127.0.0.1:{dropping_server.server_port}", retries=0) as client:
        for i in range(3):
            time.sleep(0.1)  # idle: the server closes its end meanwhile
            reply = client.act(image(i, 32, 32), "reach the red block")
            assert reply.attempts == 1 and reply.actions.shape == (4, 7)


def test_http_client_refuses_a_reply_over_its_size_limit(dropping_server):
    _DroppingHandler.drop, _DroppingHandler.reply_bytes = False, 4096
    with PolicyClient(f"http://127.0.0.1:{dropping_server.server_port}", retries=1, backoff_s=0.01,
                      max_message_bytes=2048) as client:
        with pytest.raises(PolicyUnavailableError, match="over 2048 bytes"):
            client.act(image(0, 8, 8), "reach the red block")
