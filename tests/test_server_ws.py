"""WebSocket /v1/stream of a real server, and several clients at once against a slow model."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from policy_fakes import ServerProcess, actions_for
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from policy_server import codec

pytestmark = pytest.mark.timeout(60)
DELAY_MS = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from ServerProcess(tmp_path_factory.mktemp("server") / "server.log", args=["--max-body-mb", "1"]).running()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    env = {"LAPA_FAKE_DELAY_MS": str(DELAY_MS)}
    yield from ServerProcess(tmp_path_factory.mktemp("slow") / "server.log", env=env).running()


def image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8)


def stream(srv):
    ws = connect(srv.ws_url + "/v1/stream", compression=None, max_size=None, open_timeout=5, legacy=True)
    meta = codec.unpackb(ws.recv(timeout=5))
    return ws, meta


def test_metadata_first_then_replies_in_order(server):
    ws, meta = stream(server)
    with ws:
        assert meta["chunk_size"] == 4 and meta["image_size"] == [224, 224] and meta["model_hash"]
        for i in range(5):
            img = image(i)
            ws.send(codec.packb({"image": img, "instruction": "pick", "request_id": f"ws-{i}"}))
            reply = codec.unpackb(ws.recv(timeout=5))
            assert reply["request_id"] == f"ws-{i}" and "server_ms" in reply and "model_ms" in reply
            np.testing.assert_allclose(reply["actions"], actions_for(img, "pick"), atol=1e-6)


def test_no_per_message_compression(server):
    ws = connect(server.ws_url + "/v1/stream", open_timeout=5, legacy=True)  # the client offers deflate
    with ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None


def test_input_error_is_an_error_frame_and_the_stream_goes_on(server):
    ws, _ = stream(server)
    with ws:
        ws.send(codec.packb({"image": image(), "instruction": 12, "request_id": "bad-1"}))
        error = codec.unpackb(ws.recv(timeout=5))
        assert error["status"] == 422 and error["request_id"] == "bad-1" and "instruction" in error["error"]
        ws.send(codec.packb({"image": image(), "instruction": "ok", "request_id": "good-1"}))
        assert codec.unpackb(ws.recv(timeout=5))["request_id"] == "good-1"


@pytest.mark.parametrize(("frame", "code"), [
    (b"\xc1garbage", 1007),
    (b"\x91" * 50_000 + b"\xc0", 1007),
    (b"\x81\xa1a\xc7\x01\x05x", 1007),  # an ext type
    ("a text frame", 1003),
])
def test_malformed_frame_is_an_error_frame_then_close(server, frame, code):
    ws, _ = stream(server)
    with ws:
        ws.send(frame)
        error = codec.unpackb(ws.recv(timeout=5))
        assert error["status"] == 400 and error["error"]
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd.code == code


def test_oversized_frame_closes_the_connection(server):
    """The server refuses the frame from its header (close 1009) without reading the 2 MiB payload.

    Closing a socket with unread data makes the server's kernel reset the connection, and a reset
    that overtakes the close frame discards it on the client side: then the client sees the stream
    end with no close frame (rcvd None). Both are the server refusing the frame; any *other* close
    code, or no close at all, is a failure. The server stays up and serves a new connection.
    """
    ws, _ = stream(server)
    with ws:
        with pytest.raises(ConnectionClosed) as info:  # the server may close while the frame is still going out
            ws.send(b"\0" * (2 << 20))
            ws.recv(timeout=5)
        assert info.value.rcvd is None or info.value.rcvd.code == 1009
    assert httpx.get(server.http_url + "/healthz").status_code == 200
    ws, _ = stream(server)
    with ws:
        ws.send(codec.packb({"image": np.zeros((32, 32, 3), np.uint8), "instruction": "reach the red block"}))
        assert "actions" in codec.unpackb(ws.recv(timeout=5)), "a new connection is served"


def test_clients_do_not_block_each_other_longer_than_the_model(slow_server):
    """Three robots at once, a 300 ms model: requests queue behind the model (FIFO), never behind each
    other's I/O, and the event loop stays free (a health check answers while the model runs)."""
    n = 3
    conns = [stream(slow_server)[0] for _ in range(n)]
    latencies: list[float] = [0.0] * n
    queue_ms: list[float] = [0.0] * n
    start = threading.Barrier(n + 1)

    def robot(i: int) -> None:
        start.wait()
        t0 = time.perf_counter()
        conns[i].send(codec.packb({"image": image(i), "instruction": f"robot {i}", "request_id": f"robot-{i}"}))
        reply = codec.unpackb(conns[i].recv(timeout=20))
        latencies[i] = time.perf_counter() - t0
        queue_ms[i] = reply["queue_ms"]

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    with httpx.Client(base_url=slow_server.http_url, timeout=5) as http:  # made first: httpx setup is slow
        assert http.get("/healthz").status_code == 200
        start.wait()
        time.sleep(0.05)
        t0 = time.perf_counter()
        assert http.get("/healthz").status_code == 200
        health_s = time.perf_counter() - t0
    for t in threads:
        t.join(30)
    for ws in conns:
        ws.close()
    delay = DELAY_MS / 1e3
    assert health_s < delay / 2, f"/healthz took {health_s:.3f} s while the model ran"
    assert sorted(latencies)[0] < 1.8 * delay  # the first waits for one model call
    assert max(latencies) < n * delay + 1.0  # the last waits for the calls before it, no more
    assert max(queue_ms) > 0.8 * delay * 1e3  # the queue was the model, and it is reported


def test_not_ready_stream_says_so(tmp_path):
    srv = ServerProcess(tmp_path / "server.log", env={"LAPA_FAKE_LOAD_S": "3"})
    srv.start(wait_ready=False)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(srv.http_url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert r.status_code == 200
        assert httpx.get(srv.http_url + "/readyz").status_code == 503
        r = httpx.post(srv.http_url + "/v1/act", content=codec.packb({"image": image(), "instruction": "x"}),
                       headers={"Content-Type": "application/msgpack"})
        assert r.status_code == 503 and "not ready" in r.json()["error"] and r.headers["Retry-After"]
        ws = connect(srv.ws_url + "/v1/stream", open_timeout=5, legacy=True)
        with ws:
            assert codec.unpackb(ws.recv(timeout=5))["status"] == 503
        srv.wait_ready(20)
    finally:
        srv.stop()


def test_load_failure_exits_nonzero(tmp_path):
    srv = ServerProcess(tmp_path / "server.log", env={"LAPA_FAKE_LOAD_FAIL": "1"})
    srv.start(wait_ready=False)
    try:
        assert srv.proc.wait(20) == 1
        assert "did not load" in srv.log() and "on purpose" in srv.log()
    finally:
        srv.stop()
