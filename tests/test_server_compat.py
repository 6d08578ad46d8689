"""The two ecosystem protocols, spoken byte for byte as their own clients do.

- OpenVLA: `POST /act` with a json_numpy body (as `json_numpy.patch()` + `requests.post(json=...)`
  sends it), answered with the json_numpy-encoded 7-D action; also the "double-encoded" form.
- openpi: WebSocket at the root path, msgpack with openpi's ndarray maps (bytes keys), metadata
  first, `actions` back, errors as a text frame; `Authorization: Api-Key` (see test_server_security).
"""

from __future__ import annotations

import base64
import json

import httpx
import msgpack
import numpy as np
import pytest
from policy_fakes import FAIL_INSTRUCTION, ServerProcess, actions_for, openpi_packb, openpi_unpackb
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from ServerProcess(tmp_path_factory.mktemp("server") / "server.log").running()


def image(h=224, w=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ OpenVLA


def json_numpy_dumps(obj) -> str:
    """json_numpy.dumps, as its `default` hook encodes arrays."""
    def default(o):
        if isinstance(o, np.ndarray):
            return {"__numpy__": base64.b64encode(o.tobytes()).decode(), "dtype": o.dtype.str, "shape": o.shape}
        raise TypeError(o)

    return json.dumps(obj, default=default)


def json_numpy_loads(text: str):
    """json_numpy.loads, as its `object_hook` decodes arrays."""
    def hook(d):
        if "__numpy__" in d:
            a = np.frombuffer(base64.b64decode(d["__numpy__"]), np.dtype(d["dtype"]))
            return a.reshape(d["shape"]) if d["shape"] else a[0]
        return d

    return json.loads(text, object_hook=hook)


def test_openvla_act(server):
    img = image()
    r = httpx.post(server.http_url + "/act", content=json_numpy_dumps({"image": img, "instruction": "open drawer"}),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    action = json_numpy_loads(r.text)
    assert isinstance(action, np.ndarray) and action.shape == (7,) and action.dtype == np.float32
    np.testing.assert_allclose(action, actions_for(img, "open drawer")[0], atol=1e-6)
    assert float(r.headers["X-Server-Ms"]) > 0 and float(r.headers["X-Model-Ms"]) > 0


def test_openvla_double_encoded_and_other_image_sizes(server):
    img = image(256, 256)
    body = {"encoded": json_numpy_dumps({"image": img, "instruction": "close drawer", "unnorm_key": "bridge_orig"})}
    r = httpx.post(server.http_url + "/act", json=body)
    assert r.status_code == 200
    action = json_numpy_loads(json.loads(r.text))  # a JSON string holding the json_numpy document
    assert action.shape == (7,)


@pytest.mark.parametrize(("body", "status", "match"), [
    ('{"instruction": "x"}', 422, "no 'image'"),
    ('{"image": {"__numpy__": "AAAA", "dtype": "|O", "shape": [1]}, "instruction": "x"}', 400, "dtype"),
    ('{"image": {"__numpy__": "AAAA", "dtype": "|u1", "shape": [224, 224, 3]}, "instruction": "x"}', 400, "needs"),
    ('{"encoded": 5}', 422, "double-encoded"),
    ("[1, 2]", 422, "JSON object"),
    ("{not json", 400, "malformed JSON"),
])
def test_openvla_errors_are_real_4xx(server, body, status, match):
    r = httpx.post(server.http_url + "/act", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and match in r.json()["error"]  # OpenVLA's own server answers 200 "error"


def test_openvla_model_error_is_500(server):
    body = json_numpy_dumps({"image": image(), "instruction": FAIL_INSTRUCTION})
    r = httpx.post(server.http_url + "/act", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 500 and "on purpose" in r.json()["error"]


# -------------------------------------------------------------------------------------- openpi


def openpi_connect(srv, headers=None):
    """openpi's WebsocketClientPolicy._wait_for_server: the root path, no compression, metadata first."""
    ws = connect(f"ws://{srv.host}:{srv.port}", compression=None, max_size=None, additional_headers=headers,
                 open_timeout=5, legacy=True)
    return ws, openpi_unpackb(ws.recv(timeout=5))


def test_openpi_libero_style_observation(server):
    ws, meta = openpi_connect(server)
    with ws:
        assert meta["chunk_size"] == 4 and meta["action_dim"] == 7
        img = image()
        obs = {"observation/image": img, "observation/wrist_image": image(seed=1),
               "observation/state": np.arange(8, dtype=np.float32), "prompt": "put the bowl on the plate"}
        for _ in range(3):
            ws.send(openpi_packb(obs))
            reply = openpi_unpackb(ws.recv(timeout=5))
            expected = actions_for(img, "put the bowl on the plate")
            expected[:, :3] += 1e-3 * np.arange(3, dtype=np.float32)
            assert reply["actions"].shape == (4, 7) and reply["actions"].dtype == np.float32
            np.testing.assert_allclose(reply["actions"], expected, atol=1e-6)
            assert reply["server_timing"]["infer_ms"] > 0 and reply["model_ms"] > 0 and reply["server_ms"] > 0


def test_openpi_channel_first_camera_map(server):
    """ALOHA-style: `images` map of (3, H, W) cameras, `state` of another size is an error."""
    ws, _ = openpi_connect(server)
    with ws:
        img = image()
        ws.send(openpi_packb({"images": {"cam_left_wrist": image(seed=2).transpose(2, 0, 1),
                                         "cam_high": img.transpose(2, 0, 1)}, "prompt": "fold"}))
        reply = openpi_unpackb(ws.recv(timeout=5))
        np.testing.assert_allclose(reply["actions"], actions_for(img, "fold"), atol=1e-6)
        ws.send(openpi_packb({"observation/image": img, "prompt": "fold", "state": np.zeros(14, np.float32)}))
        error = ws.recv(timeout=5)
        assert isinstance(error, str) and "state" in error
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd.code == 1008


@pytest.mark.parametrize(("frame", "match"), [
    (lambda: openpi_packb({"prompt": "x"}), "no image"),
    (lambda: openpi_packb({"observation/image": image()}), "no prompt"),
    (lambda: b"\xc1", "malformed"),
    (lambda: openpi_packb({"observation/image": np.array([{}], dtype=object), "prompt": "x"}), None),
])
def test_openpi_errors_are_a_text_frame_then_close(server, frame, match):
    ws, _ = openpi_connect(server)
    with ws:
        try:
            data = frame()
        except ValueError:  # openpi's own packer refuses object arrays; send the map by hand
            data = msgpack.packb({"observation/image": {b"__ndarray__": True, b"data": b"x", b"dtype": "|O",
                                                        b"shape": [1]}, "prompt": "x"})
            match = "dtype"
        ws.send(data)
        error = ws.recv(timeout=5)
        assert isinstance(error, str) and match in error  # openpi's client raises on a text frame
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
