"""End to end with the real torch backend: a tiny VLA checkpoint served by `--backend torch`."""

from __future__ import annotations

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
