"""API keys: refused non-loopback binds without one, and the key checked on every endpoint but /healthz."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from policy_fakes import REPO_ROOT, TESTS_DIR, ServerProcess, free_port, read_metric
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from policy_server import codec
from policy_server.client import PolicyClient, PolicyServerError
from policy_server.security import is_loopback, key_from_scope

pytestmark = pytest.mark.timeout(60)
KEY = "s3cret-key"
ENDPOINTS = [("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/metadata"), ("POST", "/v1/reset"),
             ("POST", "/v1/act"), ("POST", "/act"), ("GET", "/")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from ServerProcess(tmp_path_factory.mktemp("server") / "server.log", api_key=KEY).running()


def _request(srv, method, path, **kwargs):
    body = codec.packb({"image": np.zeros((224, 224, 3), np.uint8), "instruction": "x"})
    if path == "/act":
        body = json.dumps({"image": np.zeros((32, 32, 3), int).tolist(), "instruction": "x"}).encode()
    content = body if method == "POST" else None
    return httpx.request(method, srv.http_url + path, content=content, timeout=10,
                         headers={"Content-Type": "application/json" if path == "/act" else "application/msgpack",
                                  **kwargs.pop("headers", {})}, **kwargs)


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.5")
    assert not is_loopback("robot-server.local")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_non_loopback_bind_without_key_refuses_to_start(host):
    env = {"PYTHONPATH": f"{TESTS_DIR}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "policy_server.app", "--backend", "policy_fakes:make_policy",
                           "--host", host, "--port", str(free_port())], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "API key" in proc.stderr and "LAPA_API_KEY" in proc.stderr


def test_non_loopback_bind_with_env_key_starts_and_enforces_it(tmp_path):
    srv = ServerProcess(tmp_path / "server.log", host="0.0.0.0", env={"LAPA_API_KEY": KEY})
    srv.api_key = KEY  # for the readiness probe only
    try:
        srv.start()
        url = f"http://127.0.0.1:{srv.port}"
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.get(url + "/v1/metadata").status_code == 401
        assert httpx.get(url + "/v1/metadata", headers={"X-API-Key": KEY}).status_code == 200
    finally:
        srv.stop()


def test_healthz_needs_no_key(server):
    assert httpx.get(server.http_url + "/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_other_endpoint_needs_the_key(server, method, path):
    r = _request(server, method, path)
    assert r.status_code == 401 and r.json()["error"] == "missing or wrong API key"
    assert _request(server, method, path, headers={"Authorization": "Api-Key wrong"}).status_code == 401
    assert _request(server, method, path, headers={"X-API-Key": KEY + "x"}).status_code == 401
    assert _request(server, method, path, params={"api_key": "nope"}).status_code == 401


@pytest.mark.parametrize("how", ["api-key header", "bearer", "x-api-key", "query"])
def test_each_way_of_giving_the_key(server, how):
    kwargs = {
        "api-key header": {"headers": {"Authorization": f"Api-Key {KEY}"}},
        "bearer": {"headers": {"Authorization": f"Bearer {KEY}"}},
        "x-api-key": {"headers": {"X-API-Key": KEY}},
        "query": {"params": {"api_key": KEY}},
    }[how]
    for method, path in ENDPOINTS:
        r = _request(server, method, path, **kwargs)
        assert r.status_code == 200, (path, r.text)


def test_websockets_need_the_key(server):
    for path in ("/v1/stream", "/"):
        with pytest.raises(InvalidStatus) as info:
            connect(server.ws_url + path, open_timeout=5, legacy=True)
        assert info.value.response.status_code in (401, 403)
    ws = connect(server.ws_url + "/", additional_headers={"Authorization": f"Api-Key {KEY}"}, compression=None,
                 open_timeout=5, legacy=True)  # as openpi's client sends it
    with ws:
        assert codec.unpackb(ws.recv(timeout=5))["chunk_size"] == 4
    ws = connect(server.ws_url + f"/v1/stream?api_key={KEY}", open_timeout=5, legacy=True)
    with ws:
        assert codec.unpackb(ws.recv(timeout=5))["chunk_size"] == 4


def test_client_with_and_without_key(server):
    for url in (server.ws_url, server.http_url):
        with PolicyClient(url, api_key=KEY) as client:
            assert client.act(np.zeros((224, 224, 3), np.uint8), "x").actions.shape == (4, 7)
        with pytest.raises(PolicyServerError) as info:
            PolicyClient(url, api_key="wrong", retries=3).connect()
        assert info.value.status in (401, 403)  # refused at once, not retried into an "unavailable"


def test_auth_failures_are_counted(server):
    text = httpx.get(server.http_url + "/metrics", headers={"X-API-Key": KEY}).text
    assert read_metric(text, "lapa_server_auth_failures_total") > 0


def test_key_parsing():
    def scope(headers=(), query=b""):
        return {"headers": [(k.encode(), v.encode()) for k, v in headers], "query_string": query}

    assert key_from_scope(scope([("authorization", "Api-Key abc")])) == "abc"
    assert key_from_scope(scope([("authorization", "bearer abc ")])) == "abc"
    assert key_from_scope(scope([("authorization", "Basic abc")])) is None
    assert key_from_scope(scope([("x-api-key", "k")])) == "k"
    assert key_from_scope(scope(query=b"a=1&api_key=q%2Bk")) == "q+k"
    assert key_from_scope(scope()) is None
