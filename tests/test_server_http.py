"""The HTTP endpoints of a real server (uvicorn in a subprocess on loopback) running the fake policy."""

from __future__ import annotations

import base64
import json

import cv2
import httpx
import msgpack
import numpy as np
import pytest
from policy_fakes import FAIL_INSTRUCTION, NAN_INSTRUCTION, ServerProcess, actions_for, read_metric

from policy_server import codec

pytestmark = pytest.mark.timeout(60)

MSGPACK = {"Content-Type": "application/msgpack"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from ServerProcess(tmp_path_factory.mktemp("server") / "server.log", args=["--max-body-mb", "2"]).running()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.http_url, timeout=10.0) as client:
        yield client


def image(h=224, w=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def act(http, msg, headers=MSGPACK):
    return http.post("/v1/act", content=codec.packb(msg), headers=headers)


def metrics(http) -> str:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


# --------------------------------------------------------------------------------- endpoints


def test_health_ready_metadata_index(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"status": "ready"}
    meta = http.get("/v1/metadata").json()
    assert meta["chunk_size"] == 4 and meta["action_dim"] == 7 and meta["image_size"] == [224, 224]
    assert meta["control_hz"] == 10.0 and meta["model_hash"] == "fake-numpy-v1"
    assert meta["action_space"]["names"][-1] == "gripper" and meta["limits"]["max_body_bytes"] == 2 << 20
    packed = http.get("/v1/metadata", headers={"Accept": "application/msgpack"})
    assert packed.headers["content-type"] == "application/msgpack" and codec.unpackb(packed.content) == meta
    assert "/v1/act" in http.get("/").json()["endpoints"]
    assert http.get("/nope").status_code == 404
    assert http.get("/v1/act").status_code == 405


def test_act_msgpack(http):
    img = image()
    r = act(http, {"image": img, "instruction": "pick up the red block", "request_id": "http-1"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/msgpack"
    reply = codec.unpackb(r.content)
    assert reply["request_id"] == "http-1" and reply["replayed"] is False
    assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (4, 7)
    np.testing.assert_allclose(reply["actions"], actions_for(img, "pick up the red block"), atol=1e-6)
    assert reply["server_ms"] > 0 and reply["model_ms"] > 0 and reply["server_ms"] >= reply["model_ms"]
    assert float(r.headers["X-Server-Ms"]) > 0 and float(r.headers["X-Model-Ms"]) > 0


def test_act_state_changes_actions(http):
    img = image()
    state = np.arange(8, dtype=np.float32)
    reply = codec.unpackb(act(http, {"image": img, "instruction": "x", "state": state}).content)
    expected = actions_for(img, "x")
    expected[:, :3] += 1e-3 * state[:3]
    np.testing.assert_allclose(reply["actions"], expected, atol=1e-6)


def test_act_json_json_numpy_and_base64_png(http):
    img = image()
    body = {"image": {"__numpy__": base64.b64encode(img.tobytes()).decode(), "dtype": "|u1", "shape": [224, 224, 3]},
            "instruction": "push", "request_id": 42}
    r = http.post("/v1/act", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    reply = r.json()
    assert reply["request_id"] == 42 and "server_ms" in reply and "model_ms" in reply
    np.testing.assert_allclose(np.array(reply["actions"]), actions_for(img, "push"), atol=1e-6)
    ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    r = http.post("/v1/act", json={"image": base64.b64encode(png.tobytes()).decode(), "instruction": "push"})
    np.testing.assert_allclose(np.array(r.json()["actions"]), actions_for(img, "push"), atol=1e-6)
    r = http.post("/v1/act", json=body, headers={"Accept": "application/msgpack"})
    assert r.headers["content-type"] == "application/msgpack"


def test_act_jpeg_bytes_and_resize(http):
    img = cv2.GaussianBlur(image(480, 640), (15, 15), 5)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    r = act(http, {"image": jpg.tobytes(), "instruction": "stack"})
    assert r.status_code == 200
    small = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(codec.unpackb(r.content)["actions"], actions_for(small, "stack"), atol=1e-4)
    r = act(http, {"image": image(100, 300), "instruction": "stack"})
    assert r.status_code == 200 and codec.unpackb(r.content)["actions"].shape == (4, 7)


def test_reset(http):
    assert http.post("/v1/reset").json() == {"status": "reset"}


# --------------------------------------------------------------------------------- bad input


def _ext_type_body() -> bytes:
    return msgpack.packb({"image": msgpack.ExtType(3, b"\0" * 16), "instruction": "x"})


def _object_dtype_body() -> bytes:
    return msgpack.packb({"image": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]},
                          "instruction": "x"})


def _size_mismatch_body() -> bytes:
    return msgpack.packb({"image": {b"__ndarray__": True, b"data": b"\0" * 10, b"dtype": "|u1",
                                    b"shape": [224, 224, 3]}, "instruction": "x"})


BAD_BODIES = [
    ("malformed", b"\xc1\xc1\xc1", 400, "malformed"),
    ("truncated", codec.packb({"image": image(), "instruction": "x"})[:-100], 400, "malformed"),
    ("trailing", codec.packb({"image": image(), "instruction": "x"}) + b"\0", 400, "malformed"),
    ("ext type", _ext_type_body(), 400, "max_ext_len"),
    ("huge declared length", b"\x82\xa5image\xc6\xff\xff\xff\xf0", 400, "malformed"),
    ("huge declared array", b"\xdd\x7f\xff\xff\xff", 400, "malformed"),
    ("depth bomb", b"\x91" * 50_000 + b"\xc0", 400, "deep"),
    ("object dtype", _object_dtype_body(), 400, "dtype"),
    ("size mismatch", _size_mismatch_body(), 400, "needs 150528"),
    ("not a map", codec.packb([1, 2, 3]), 422, "must be a map"),
    ("missing image", codec.packb({"instruction": "x"}), 422, "no 'image'"),
    ("missing instruction", codec.packb({"image": image()}), 422, "no 'instruction'"),
    ("int instruction", codec.packb({"image": image(), "instruction": 3}), 422, "must be a string"),
    ("bytes instruction", codec.packb({"image": image(), "instruction": b"x"}), 422, "must be a string"),
    ("long instruction", codec.packb({"image": image(), "instruction": "x" * 600}), 422, "600 characters"),
    ("float image", codec.packb({"image": image().astype(np.float32), "instruction": "x"}), 422, "uint8"),
    ("2-d image", codec.packb({"image": image()[..., 0], "instruction": "x"}), 422, "(H, W, 3)"),
    ("rgba image", codec.packb({"image": np.zeros((224, 224, 4), np.uint8), "instruction": "x"}), 422, "(H, W, 3)"),
    ("huge image side", codec.packb({"image": np.zeros((1, 5000, 3), np.uint8), "instruction": "x"}), 422, "outside"),
    ("gif bytes", codec.packb({"image": b"GIF89a" + b"\0" * 50, "instruction": "x"}), 422, "neither JPEG nor PNG"),
    ("bad state", codec.packb({"image": image(), "instruction": "x", "state": [1, 2]}), 422, "state"),
    ("bad request id", codec.packb({"image": image(), "instruction": "x", "request_id": [1]}), 422, "request_id"),
]


@pytest.mark.parametrize(("body", "status", "match"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
def test_bad_input_is_a_4xx_with_a_message(http, body, status, match):
    r = http.post("/v1/act", content=body, headers=MSGPACK)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()
    assert error["status"] == status and match in error["error"]


def test_bad_json_and_content_type(http):
    r = http.post("/v1/act", content=b'{"image": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = http.post("/v1/act", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = http.post("/v1/act", json={"image": "not base64!", "instruction": "x"})
    assert r.status_code == 422 and "base64" in r.json()["error"]
    r = http.post("/v1/act", json={"image": [[[300, 0, 0]]], "instruction": "x"})
    assert r.status_code == 422


def test_body_limit_is_413(http):
    r = http.post("/v1/act", content=b"\0" * (3 << 20), headers=MSGPACK)
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(40):
            yield b"\0" * (100 << 10)

    r = http.post("/v1/act", content=chunks(), headers=MSGPACK)
    assert r.status_code == 413


def test_model_failures_are_500_not_200(http):
    r = act(http, {"image": image(), "instruction": FAIL_INSTRUCTION, "request_id": "fail-1"})
    assert r.status_code == 500 and "failed on purpose" in r.json()["error"] and r.json()["request_id"] == "fail-1"
    r = act(http, {"image": image(), "instruction": NAN_INSTRUCTION})
    assert r.status_code == 500 and "non-finite" in r.json()["error"]
    assert http.get("/healthz").status_code == 200  # still serving


# ---------------------------------------------------------------------- request ids, metrics


def test_retried_request_id_is_answered_from_cache_not_rerun(http):
    before = read_metric(metrics(http), "lapa_server_model_calls_total")
    msg = {"image": image(seed=3), "instruction": "retry me", "request_id": "dup-1"}
    first = codec.unpackb(act(http, msg).content)
    second = codec.unpackb(act(http, msg).content)
    assert first["replayed"] is False and second["replayed"] is True
    assert second["request_id"] == "dup-1" and np.array_equal(first["actions"], second["actions"])
    text = metrics(http)
    assert read_metric(text, "lapa_server_model_calls_total") == before + 1
    assert read_metric(text, "lapa_server_replayed_total") >= 1
    r = act(http, {**msg, "image": image(seed=4)})  # the same id for another observation
    assert r.status_code == 409 and "different observation" in r.json()["error"]


def test_failed_requests_are_not_remembered(http):
    msg = {"image": image(), "instruction": FAIL_INSTRUCTION, "request_id": "fail-twice"}
    assert act(http, msg).status_code == 500
    assert act(http, msg).status_code == 500  # run again, not a replayed failure nor a 409


def test_metrics_move(http):
    before = metrics(http)
    act(http, {"image": image(), "instruction": "count me"})
    http.post("/v1/act", content=b"\xc1", headers=MSGPACK)
    after = metrics(http)
    assert read_metric(after, "lapa_server_requests_total", transport="http") == \
        read_metric(before, "lapa_server_requests_total", transport="http") + 2
    assert read_metric(after, "lapa_server_errors_total", transport="http", status="400") == \
        read_metric(before, "lapa_server_errors_total", transport="http", status="400") + 1
    for stage in ("decode", "queue", "model", "encode"):
        assert read_metric(after, "lapa_server_stage_seconds_count", stage=stage) > \
            read_metric(before, "lapa_server_stage_seconds_count", stage=stage)
    assert read_metric(after, "lapa_server_request_seconds_count", transport="http") > 0
    assert read_metric(after, "lapa_server_ready") == 1.0


def test_json_body_error_replies_are_json_too(http):
    r = http.post("/v1/act", content=json.dumps({"instruction": "x"}), headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json() == {"error": "request has no 'image'", "status": 422,
                                                 "request_id": r.json()["request_id"]}


def test_hot_routes_send_only_the_listed_method_and_path_past_the_framework():
    from starlette.responses import PlainTextResponse
    from starlette.testclient import TestClient

    from policy_server.app import HotRoutes

    async def framework(scope, receive, send):
        await PlainTextResponse(f"framework {scope['method']} {scope['path']}")(scope, receive, send)

    async def endpoint(request):
        return PlainTextResponse(f"hot {len(await request.body())} bytes")

    client = TestClient(HotRoutes(framework, {("POST", "/v1/act"): endpoint}))  # no lifespan: HTTP only
    assert client.post("/v1/act", content=b"abc").text == "hot 3 bytes"
    assert client.get("/v1/act").text == "framework GET /v1/act"
    assert client.post("/v1/reset").text == "framework POST /v1/reset"


def test_act_refuses_other_methods(http):
    assert http.get("/v1/act").status_code == 405
