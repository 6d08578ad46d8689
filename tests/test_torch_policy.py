"""TorchPolicy: the Policy protocol over a VLA checkpoint, instruction cache, input validation."""

import hashlib

import numpy as np
import pytest
import torch
from vla_fakes import FakeEncoder, save_random_action_vla

from lapa.action import fake_state
from lapa.checkpoint import CheckpointError
from lapa.policy.checkpoint_io import save_vla
from lapa.policy.config import VLAConfig
from lapa.policy.model import VLA
from lapa.policy.torch_policy import TorchPolicy
from lapa.policy_protocol import Policy, PolicyInputError

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = dict(image_size=32, patch_size=8, dim=64, depth=2, heads=2, chunk_size=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_action_vla(tmp_path_factory.mktemp("vla") / "policy", **SMALL, control_hz=5.0)


def _obs(instruction="pick up the red block", seed=0, size=32):
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return {"image": image, "instruction": instruction}


def test_infer_returns_a_float32_chunk(checkpoint):
    policy = TorchPolicy(checkpoint, text_encoder=FakeEncoder())
    assert isinstance(policy, Policy)
    reply = policy.infer(_obs())
    assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (3, 7)
    assert reply["bins"].dtype == np.int64 and reply["bins"].shape == (3, 7)
    assert isinstance(reply["model_ms"], float) and reply["model_ms"] > 0
    np.testing.assert_array_equal(reply["actions"], policy.tokenizer.decode(reply["bins"]))
    assert set(np.unique(reply["actions"][:, 6])) <= {0.0, 1.0}
    again = policy.infer(_obs())
    np.testing.assert_array_equal(again["actions"], reply["actions"])  # deterministic
    policy.reset()


def test_matches_the_model_directly(checkpoint):
    encoder = FakeEncoder()
    policy = TorchPolicy(checkpoint, text_encoder=encoder)
    obs = _obs(seed=3)
    text = encoder.encode([obs["instruction"]])
    bins, actions = policy.model.predict_actions(torch.from_numpy(obs["image"])[None], text)
    reply = policy.infer(obs)
    np.testing.assert_array_equal(reply["bins"], bins[0].numpy())
    np.testing.assert_array_equal(reply["actions"], actions[0].numpy())


def test_rejects_malformed_observations(checkpoint):
    policy = TorchPolicy(checkpoint, text_encoder=FakeEncoder())
    with pytest.raises(PolicyInputError, match="uint8 \\(32, 32, 3\\)"):
        policy.infer(_obs(size=64))
    bad = _obs()
    bad["image"] = bad["image"].astype(np.float32)
    with pytest.raises(PolicyInputError):
        policy.infer(bad)
    with pytest.raises(PolicyInputError, match="instruction"):
        policy.infer({"image": _obs()["image"]})
    with pytest.raises(PolicyInputError, match="state"):
        policy.infer({**_obs(), "state": np.zeros(3, dtype=np.float32)})


def test_read_only_images_and_state_are_accepted(checkpoint):
    policy = TorchPolicy(checkpoint, text_encoder=FakeEncoder())
    obs = _obs()
    obs["image"].setflags(write=False)
    obs["state"] = np.zeros(8, dtype=np.float32)
    assert policy.infer(obs)["actions"].shape == (3, 7)


def test_instruction_is_encoded_once(checkpoint):
    encoder = FakeEncoder()
    policy = TorchPolicy(checkpoint, text_encoder=encoder)
    for seed in range(3):
        policy.infer(_obs("stack the blocks", seed=seed))
    assert encoder.encoded == ["stack the blocks"]
    policy.infer(_obs("push the green block"))
    policy.infer(_obs("stack the blocks"))
    assert encoder.encoded == ["stack the blocks", "push the green block"]
    assert policy.instructions.hits == 3 and policy.instructions.misses == 2


def test_metadata(checkpoint):
    policy = TorchPolicy(checkpoint, text_encoder=FakeEncoder(), num_threads=1)
    meta = policy.metadata
    assert meta["backend"] == "torch" and meta["image_size"] == [32, 32]
    assert meta["chunk_size"] == 3 and meta["action_dim"] == 7 and meta["control_hz"] == 5.0
    assert meta["decoder"] == "parallel" and meta["num_threads"] == 1
    assert meta["model_hash"] == hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()


def test_autoregressive_decoding_of_a_parallel_checkpoint_agrees(checkpoint):
    fast = TorchPolicy(checkpoint, text_encoder=FakeEncoder())
    loop = TorchPolicy(checkpoint, text_encoder=FakeEncoder(), decoder="autoregressive")
    assert loop.metadata["decoder"] == "autoregressive"
    np.testing.assert_array_equal(fast.infer(_obs())["bins"], loop.infer(_obs())["bins"])


def test_refuses_latent_checkpoints_and_wrong_encoders(checkpoint, tmp_path):
    torch.manual_seed(0)
    latent = VLA(VLAConfig.preset("tiny", **SMALL))
    save_vla(tmp_path / "latent", latent)
    with pytest.raises(CheckpointError, match="latent-pretraining"):
        TorchPolicy(tmp_path / "latent", text_encoder=FakeEncoder())
    small = FakeEncoder()
    small.embedding_dim = 128
    with pytest.raises(CheckpointError, match="384-float"):
        TorchPolicy(checkpoint, text_encoder=small)


# ------------------------------------------------------------------ a model with a proprio input and the l1 head

STATE_SMALL = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, num_bins=16, chunk_size=2)


@pytest.fixture(scope="module")
def state_checkpoint(tmp_path_factory):
    return save_random_action_vla(tmp_path_factory.mktemp("vla") / "state", preset="tabletop", **STATE_SMALL)


def test_a_state_model_gets_the_observations_state(state_checkpoint):
    encoder = FakeEncoder()
    policy = TorchPolicy(state_checkpoint, text_encoder=encoder)
    assert policy.config.state_dim == 8 and policy.config.action_output == "l1"
    meta = policy.metadata
    assert meta["state_dim"] == 8 and meta["action_output"] == "l1"
    states = fake_state(2, seed=1)
    assert states.shape == (2, 8) and states.dtype == np.float32 and np.all(states != 0)
    obs = {**_obs(seed=5), "state": states[0]}
    reply = policy.infer(obs)
    assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (2, 7)
    assert reply["bins"].dtype == np.int64 and reply["bins"].shape == (2, 7)
    text = encoder.encode([obs["instruction"]])
    bins, actions = policy.model.predict_actions(torch.from_numpy(obs["image"])[None], text,
                                                 state=torch.from_numpy(states[:1]))
    np.testing.assert_array_equal(reply["bins"], bins[0].numpy())
    np.testing.assert_array_equal(reply["actions"], actions[0].numpy())
    other = policy.infer({**obs, "state": states[1]})
    assert not np.array_equal(other["actions"], reply["actions"])  # the state reaches the model
    policy.warmup(1)  # feeds a fake state itself


def test_a_state_model_refuses_an_observation_without_state(state_checkpoint):
    policy = TorchPolicy(state_checkpoint, text_encoder=FakeEncoder())
    with pytest.raises(PolicyInputError, match=r"this model takes the proprio state: send 'state', 8 floats"):
        policy.infer(_obs())
    with pytest.raises(PolicyInputError, match="state"):
        policy.infer({**_obs(), "state": np.zeros(7, dtype=np.float32)})


def test_a_model_without_state_input_reports_it(checkpoint):
    meta = TorchPolicy(checkpoint, text_encoder=FakeEncoder()).metadata
    assert meta["state_dim"] == 0 and meta["action_output"] == "bins"
