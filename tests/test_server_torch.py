"""End to end with the real torch backend: a tiny VLA checkpoint served by `--backend torch`."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from policy_fakes import ServerProcess

from policy_server.client import PolicyClient

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

torch = pytest.importorskip("torch")
torch_policy = pytest.importorskip("lapa.policy.torch_policy")
SMALL = dict(image_size=32, patch_size=8, dim=64, depth=2, heads=2, chunk_size=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from lapa.policy.action_tokenizer import ActionTokenizer
    from lapa.policy.checkpoint_io import save_vla
    from lapa.policy.config import VLAConfig
    from lapa.policy.model import VLA

    rng = np.random.default_rng(0)
    actions = rng.normal(0, 0.01, (300, 7))
    actions[:, 6] = rng.random(300) < 0.5
    tokenizer = ActionTokenizer.fit_new(actions)
    torch.manual_seed(0)
    model = VLA(VLAConfig.preset("tiny", **SMALL, control_hz=5.0)).replace_head_for_actions(tokenizer)
    path = tmp_path_factory.mktemp("vla") / "policy"
    save_vla(path, model.eval(), model.config, tokenizer)
    return path


@pytest.fixture(scope="module")
def local_policy(checkpoint):
    try:
        return torch_policy.TorchPolicy(checkpoint, num_threads=1)
    except Exception as err:  # noqa: BLE001 - the bundled text encoder may be missing here
        pytest.skip(f"TorchPolicy cannot load here: {err}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint, local_policy):
    srv = ServerProcess(tmp_path_factory.mktemp("server") / "server.log", backend="torch",
                        args=["--model", str(checkpoint), "--threads", "1"])
    yield from srv.running(timeout_s=120)


def test_torch_backend_serves_the_checkpoint(server, local_policy):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    expected = local_policy.infer({"image": image, "instruction": "pick up the red block"})["actions"]
    for url in (server.ws_url, server.http_url):
        with PolicyClient(url, timeout_s=30) as client:
            meta = client.metadata
            assert meta["backend"] == "torch" and meta["chunk_size"] == 3 and meta["image_size"] == [32, 32]
            assert meta["control_hz"] == 5.0 and meta["model_hash"] == local_policy.metadata["model_hash"]
            reply = client.act(image, "pick up the red block")
            assert reply.actions.shape == (3, 7) and reply.actions.dtype == np.float32 and reply.model_ms > 0
            np.testing.assert_allclose(reply.actions, expected, atol=1e-5)
            big = np.kron(image, np.ones((7, 7, 1), np.uint8))  # 224x224: the server resizes to 32x32
            assert client.act(big, "pick up the red block").actions.shape == (3, 7)


# ------------------------------------------------------------------ a model that takes the proprio state


@pytest.fixture(scope="module")
def state_checkpoint(tmp_path_factory):
    """The `tabletop` recipe (conv + FiLM, proprio state token, l1 head), small; 384-d text (the bundled MiniLM)."""
    from vla_fakes import save_random_action_vla

    return save_random_action_vla(tmp_path_factory.mktemp("vla") / "state", preset="tabletop", image_size=32,
                                  patch_size=8, dim=32, depth=1, heads=2, num_bins=16, chunk_size=2)


@pytest.fixture(scope="module")
def local_state_policy(state_checkpoint, local_policy):
    return torch_policy.TorchPolicy(state_checkpoint, num_threads=1)


@pytest.fixture(scope="module")
def state_server(tmp_path_factory, state_checkpoint, local_state_policy):
    # the server warms the model up with a state of its own: it would not become ready otherwise
    srv = ServerProcess(tmp_path_factory.mktemp("server") / "server.log", backend="torch",
                        args=["--model", str(state_checkpoint), "--threads", "1"])
    yield from srv.running(timeout_s=120)


def test_a_state_model_is_served_with_the_state(state_server, local_state_policy):
    from lapa.action import fake_state

    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    state = fake_state(1, seed=2)[0]
    expected = local_state_policy.infer({"image": image, "instruction": "stack the blocks", "state": state})
    for url in (state_server.ws_url, state_server.http_url):
        with PolicyClient(url, timeout_s=30) as client:
            assert client.metadata["state_dim"] == 8 and client.metadata["action_output"] == "l1"
            reply = client.act(image, "stack the blocks", state)
            assert reply.actions.shape == (2, 7)
            np.testing.assert_allclose(reply.actions, expected["actions"], atol=1e-5)
    # openpi's protocol carries it as `observation/state`
    from policy_fakes import openpi_packb, openpi_unpackb
    from websockets.sync.client import connect

    with connect(state_server.ws_url, compression=None, max_size=None, open_timeout=10) as ws:
        assert openpi_unpackb(ws.recv(timeout=30))["state_dim"] == 8
        ws.send(openpi_packb({"observation/image": image, "prompt": "stack the blocks", "observation/state": state}))
        np.testing.assert_allclose(openpi_unpackb(ws.recv(timeout=30))["actions"], expected["actions"], atol=1e-5)


def test_a_state_model_without_state_is_a_422_that_says_what_to_send(state_server):
    import httpx

    from policy_server import codec
    from policy_server.client import PolicyServerError

    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    r = httpx.post(state_server.http_url + "/v1/act", content=codec.packb({"image": image, "instruction": "go"}),
                   headers={"Content-Type": "application/msgpack", "Accept": "application/json"}, timeout=30)
    assert r.status_code == 422
    assert "this model takes the proprio state: send 'state', 8 floats" in r.json()["error"]
    with PolicyClient(state_server.ws_url, timeout_s=30) as client:  # the stream answers and stays open
        with pytest.raises(PolicyServerError, match="proprio state") as err:
            client.act(image, "go")
        assert err.value.status == 422
        assert client.act(image, "go", np.zeros(8, np.float32)).actions.shape == (2, 7)
    # OpenVLA's /act carries no state: a 422 that says where to send it, never a 500
    body = json.dumps({"image": {"__numpy__": base64.b64encode(image.tobytes()).decode(), "dtype": "|u1",
                                 "shape": list(image.shape)}, "instruction": "go"})
    r = httpx.post(state_server.http_url + "/act", content=body, headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 422 and "OpenVLA's /act request does not carry" in r.json()["error"]


@pytest.fixture(scope="module")
def history_server(tmp_path_factory, local_policy):
    """A tabletop model with a state history (lags 2 and 5 ticks): requests carry 3 states."""
    from vla_fakes import save_random_action_vla

    ckpt = save_random_action_vla(tmp_path_factory.mktemp("vla") / "history", preset="tabletop", image_size=32,
                                  patch_size=8, dim=32, depth=1, heads=2, num_bins=16, chunk_size=2,
                                  state_history=(2, 5))
    srv = ServerProcess(tmp_path_factory.mktemp("server") / "server.log", backend="torch",
                        args=["--model", str(ckpt), "--threads", "1"])
    for running in srv.running(timeout_s=120):
        yield running, torch_policy.TorchPolicy(ckpt, num_threads=1)


def test_a_history_model_is_served_with_its_states_and_names_the_length_it_needs(history_server):
    from lapa.action import fake_state
    from policy_server.client import PolicyServerError

    server, local = history_server
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    state = fake_state(1, seed=3, dim=24)[0]
    expected = local.infer({"image": image, "instruction": "push the red block left", "state": state})["actions"]
    with PolicyClient(server.ws_url, timeout_s=30) as client:
        assert client.metadata["state_dim"] == 24 and client.metadata["state_history"] == [2, 5]
        np.testing.assert_allclose(client.act(image, "push the red block left", state).actions, expected, atol=1e-5)
        with pytest.raises(PolicyServerError, match="24") as err:  # the current state alone is not enough
            client.act(image, "push the red block left", state[:8])
        assert err.value.status == 422
        with pytest.raises(PolicyServerError) as err:  # not a whole number of states
            client.act(image, "push the red block left", np.zeros(9, np.float32))
        assert err.value.status == 422


def test_onnxruntime_serves_a_checkpoint_through_its_cached_export(tmp_path_factory, state_checkpoint,
                                                                   local_state_policy):
    """`--backend onnxruntime --model CHECKPOINT` (the launch file's default): exported on first start
    into $LAPA_CACHE_DIR, found there on the next; same actions as torch."""
    from lapa.action import fake_state

    cache = tmp_path_factory.mktemp("cache")
    image = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    state = fake_state(1, seed=4)[0]
    expected = local_state_policy.infer({"image": image, "instruction": "reach the red block", "state": state})
    for _ in range(2):  # the first start exports, the second finds the export
        srv = ServerProcess(tmp_path_factory.mktemp("server") / "server.log", backend="onnxruntime",
                            args=["--model", str(state_checkpoint), "--threads", "1"],
                            env={"LAPA_CACHE_DIR": str(cache)})
        for server in srv.running(timeout_s=300):
            with PolicyClient(server.ws_url, timeout_s=30) as client:
                assert client.metadata["backend"] == "onnxruntime"
                reply = client.act(image, "reach the red block", state)
                np.testing.assert_allclose(reply.actions, expected["actions"], atol=1e-4)
        assert len(list((cache / "exports").iterdir())) == 1, "the second start reuses the first export"
