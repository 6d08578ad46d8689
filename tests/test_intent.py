"""The intent preview: the VLA's latent-action head + the LAQ decoder imagine the next frames
(lapa/policy/intent.py), the policy server's POST /v1/intent, the console's client of it, and the
pieces shipped beside the default model."""

from __future__ import annotations

import base64
import shutil
import time

import cv2
import msgpack
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from policy_fakes import FakePolicy
from vla_fakes import FakeEncoder, fit_tokenizer

from lapa.checkpoint import CheckpointError
from lapa.intent_layout import has_intent, keeps_latent_head
from lapa.laq.config import LAQConfig
from lapa.laq.model import LAQ
from lapa.policy.checkpoint_io import save_vla
from lapa.policy.config import VLAConfig
from lapa.policy.intent import IntentModel
from lapa.policy.model import VLA
from lapa_ros.launch_plan import DEFAULT_MODEL_DIR
from policy_server import codec
from policy_server.app import create_app
from policy_server.metrics import Metrics
from policy_server.service import PolicyService, ServiceConfig

KEY = "intent-key"


def make_intent_dir(root, codebook_size: int = 8, image_size: int = 32):
    """A tiny random stage-2 VLA (latent head) and a tiny LAQ of the same codes, as `<root>/intent/`."""
    torch.manual_seed(0)
    vla = VLA(VLAConfig.preset("tiny", image_size=image_size, patch_size=8, dim=32, depth=1, heads=2,
                               head="latent", latent_seq_len=4, latent_codebook_size=8))
    save_vla(root / "intent" / "latent", vla.eval())
    laq = LAQ(LAQConfig.preset("tiny", image_size=image_size, patch_size=8, dim=32, heads=2, dim_head=16,
                               spatial_depth=1, temporal_depth=1, decoder_depth=1, codebook_size=codebook_size))
    laq.save(root / "intent" / "laq")
    return root


@pytest.fixture(scope="module")
def intent_dir(tmp_path_factory):
    return make_intent_dir(tmp_path_factory.mktemp("model"))


def test_imagines_frames_from_codes_of_the_latent_head(intent_dir, torch_one_thread):
    assert has_intent(intent_dir)
    model = IntentModel.load(intent_dir, text_encoder=FakeEncoder(), steps=3)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # any size: resized
    out = model.imagine(image, "reach the red block")
    assert out["latent_codes"].shape == (3, 4) and out["latent_codes"].dtype == np.int64
    assert ((0 <= out["latent_codes"]) & (out["latent_codes"] < 8)).all()
    assert out["frames"].shape == (3, 32, 32, 3) and out["frames"].dtype == np.uint8
    again = model.imagine(image, "reach the red block")
    np.testing.assert_array_equal(again["frames"], out["frames"])  # deterministic
    # the rollout is the LAQ decoder applied to the codes: the first frame is decode(image, codes[0])
    x = torch.nn.functional.interpolate(torch.from_numpy(image).float().permute(2, 0, 1)[None] / 255.0,
                                        size=(32, 32), mode="area").permute(0, 2, 3, 1)
    first = model.laq.decode(x, torch.from_numpy(out["latent_codes"][:1]))[0]
    assert np.abs((first.detach().numpy() * 255).round() - out["frames"][0]).max() <= 1
    with pytest.raises(ValueError):
        model.imagine(image, "x", steps=0)
    with pytest.raises(ValueError):
        model.imagine(image[:, :, :2], "x")


def test_latent_head_and_laq_must_share_their_codes(tmp_path):
    make_intent_dir(tmp_path, codebook_size=16)
    with pytest.raises(CheckpointError, match="not the same codes"):
        IntentModel.load(tmp_path, text_encoder=FakeEncoder())
    with pytest.raises(CheckpointError, match="no intent preview"):
        IntentModel.load(tmp_path / "nothing", text_encoder=FakeEncoder())


def test_a_policy_with_its_own_latent_head_previews_from_its_own_trunk(tmp_path, torch_one_thread):
    """No separate stage-2 model: the action model's latent head (config.latent_head) imagines."""
    torch.manual_seed(1)
    policy = VLA(VLAConfig.preset("tiny", image_size=32, patch_size=8, dim=32, depth=1, heads=2, head="action",
                                  num_bins=16, latent_head=True), fit_tokenizer(num_bins=16))
    save_vla(tmp_path, policy.eval(), tokenizer=fit_tokenizer(num_bins=16))
    make_intent_dir(tmp_path)  # the LAQ of the same codes (and a stage-2 model, removed next)
    shutil.rmtree(tmp_path / "intent" / "latent")
    assert keeps_latent_head(tmp_path) and has_intent(tmp_path)
    model = IntentModel.load(tmp_path, text_encoder=FakeEncoder(), steps=2)
    assert model.vla.config.head == "action" and model.vla.action_head is not None
    assert model.metadata["latent_head"] == "policy"
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = model.imagine(image, "reach the red block")
    text = FakeEncoder().encode(["reach the red block"]).float()
    expected = policy.predict_latents(torch.from_numpy(image)[None], text)[0].numpy()
    np.testing.assert_array_equal(out["latent_codes"][0], expected)
    (tmp_path / "intent" / "laq" / "config.json").unlink()
    assert not has_intent(tmp_path), "the LAQ's decoder draws the frames: without it there is no preview"


def server(intent_dir=None, api_key=None):
    factory = None
    if intent_dir is not None:
        def factory():
            return IntentModel.load(intent_dir, text_encoder=FakeEncoder())
    service = PolicyService(lambda: FakePolicy(image_size=(32, 32)), ServiceConfig(warmup_steps=1), Metrics(),
                            intent_factory=factory)
    return TestClient(create_app(service, api_key=api_key))


def wait_ready(client, headers=None):
    deadline = time.monotonic() + 30
    while client.get("/readyz", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz", headers=headers).json()
        time.sleep(0.05)


def test_server_answers_v1_intent_in_msgpack_and_json(intent_dir, torch_one_thread):
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with server(intent_dir, api_key=KEY) as client:
        wait_ready(client, {"X-API-Key": KEY})
        headers = {"X-API-Key": KEY, "Content-Type": "application/msgpack"}
        meta = client.get("/v1/metadata", headers={"X-API-Key": KEY}).json()
        assert meta["intent"] == {"steps": 4, "latent_seq_len": 4, "codebook_size": 8, "frame_size": [32, 32],
                                  "latent_head": "lineage"}
        body = codec.packb({"image": image, "instruction": "push the blue block left"})
        assert client.post("/v1/intent", content=body, headers={"Content-Type": "application/msgpack"}
                           ).status_code == 401
        r = client.post("/v1/intent", content=body, headers=headers)
        assert r.status_code == 200
        out = codec.unpackb(r.content)
        assert out["frames"].shape == (4, 32, 32, 3) and out["latent_codes"].shape == (4, 4)
        r = client.post("/v1/intent", content=body, headers={**headers, "Accept": "application/json"})
        reply = r.json()
        assert len(reply["frames_png"]) == 4 and len(reply["latent_codes"]) == 4
        png = cv2.imdecode(np.frombuffer(base64.b64decode(reply["frames_png"][0]), np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(png[:, :, ::-1], out["frames"][0])
        # bad input: a clear 4xx
        for bad, status in ((msgpack.packb({"instruction": "x"}), 422), (b"\xc1garbage", 400),
                            (codec.packb({"image": image, "instruction": ""}), 422)):
            r = client.post("/v1/intent", content=bad, headers=headers)
            assert r.status_code == status, (bad[:20], r.json())
            assert r.json()["error"]


def test_a_server_without_intent_says_so(torch_one_thread):
    image = np.zeros((32, 32, 3), np.uint8)
    with server() as client:
        wait_ready(client)
        assert "intent" not in client.get("/v1/metadata").json()
        r = client.post("/v1/intent", content=codec.packb({"image": image, "instruction": "reach the red block"}),
                        headers={"Content-Type": "application/msgpack"})
        assert r.status_code == 404 and "--intent" in r.json()["error"]


def test_a_preview_that_does_not_load_leaves_the_policy_served(tmp_path, torch_one_thread):
    make_intent_dir(tmp_path, codebook_size=16)  # codes that do not match: IntentModel refuses
    with server(tmp_path) as client:
        wait_ready(client)
        meta = client.get("/v1/metadata").json()
        assert "intent" not in meta and "not the same codes" in meta["intent_error"]
        image = np.zeros((32, 32, 3), np.uint8)
        body = codec.packb({"image": image, "instruction": "reach the red block"})
        assert client.post("/v1/act", content=body, headers={"Content-Type": "application/msgpack"}).status_code == 200
        assert client.post("/v1/intent", content=body, headers={"Content-Type": "application/msgpack"}
                           ).status_code == 404


def test_the_default_model_ships_its_intent_preview(torch_one_thread):
    """The default policy's own latent head (beside its action head) and the LAQ of its codes."""
    assert has_intent(DEFAULT_MODEL_DIR) and keeps_latent_head(DEFAULT_MODEL_DIR)
    from lapa.policy.text_encoder import TextEncoder

    model = IntentModel.load(DEFAULT_MODEL_DIR, text_encoder=TextEncoder.load())
    assert model.vla.config.image_size == 64 and model.laq.config.image_size == 64
    assert model.metadata["latent_head"] == "policy" and model.vla.action_head is not None
    image = np.full((128, 128, 3), 120, np.uint8)
    out = model.imagine(image, "reach the red block")
    assert out["frames"].shape == (4, 64, 64, 3) and out["latent_codes"].shape == (4, 4)
