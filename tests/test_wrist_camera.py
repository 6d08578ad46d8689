"""The hand (wrist) camera: recorded beside the scene camera, read back per camera, a second image
input of the VLA (shared encoder, own camera embedding), finetuned onto a scene-only model and run
by the closed-loop evaluation, exported as a second graph input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vla_fakes import FakeEncoder, fit_tokenizer

from lapa.action import fake_state
from lapa.data.lerobot_v3 import LeRobotV3Dataset
from lapa.eval.closed_loop import ClosedLoopExecutor
from lapa.policy.checkpoint_io import load_vla
from lapa.policy.config import VLAConfig
from lapa.policy.datasets import ActionSet, apply_augmentation
from lapa.policy.model import VLA
from lapa.policy.torch_policy import TorchPolicy
from lapa.policy.train import TrainOptions, finetune_actions
from lapa.policy_protocol import PolicyInputError, camera_images
from lapa.sim.env import Observation
from lapa.sim.record import ExpertOptions, record_dataset

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, chunk_size=2, num_bins=16, keypoints=4,
             goal_aux=False, state_dim=8)
BOTH = ("scene", "wrist")


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "robot"
    record_dataset("reach", 2, root, seed=5, image_size=32, progress=False,
                   expert=ExpertOptions(noise_m=0.0, until_done=True), wrist_camera=True)
    return root


def test_recording_writes_both_cameras_frame_for_frame(robot):
    ds = LeRobotV3Dataset(robot)
    assert ds.video_keys == ["observation.images.scene", "observation.images.wrist"]
    scene, wrist = ds.episode(0), ds.episode(0, "observation.images.wrist")
    assert wrist.frames.shape == scene.frames.shape
    assert np.abs(wrist.frames.astype(int) - scene.frames.astype(int)).mean() > 10  # another view


def test_action_samples_carry_both_cameras_and_augment_them_apart(robot):
    data = ActionSet.from_lerobot([robot], 32, 2, FakeEncoder(), cameras=BOTH)
    data.set_tokenizer(fit_tokenizer(num_bins=16))
    assert data.clips.more_cameras[0].shape == data.clips.frames.shape
    batch = data.batch(np.arange(4))
    assert batch.images.shape == (4, 2, 32, 32, 3) and batch.images.dtype == torch.uint8
    torch.testing.assert_close(batch.images[:, 1], torch.from_numpy(data.clips.more_cameras[0][data.frame_rows[:4]]))
    shifted = apply_augmentation(batch.images, np.random.default_rng(0), "shift")
    assert shifted.shape == (4, 2, 32, 32, 3) and shifted.dtype == torch.float32
    scene_only = ActionSet.from_lerobot([robot], 32, 2, FakeEncoder())
    scene_only.set_tokenizer(fit_tokenizer(num_bins=16))
    assert scene_only.batch(np.arange(4)).images.shape == (4, 32, 32, 3)


def test_a_model_given_the_wrist_camera_keeps_the_trunk_and_reads_both_images():
    torch.manual_seed(0)
    model = VLA(VLAConfig.preset("tabletop", head="action", **SMALL), fit_tokenizer(num_bins=16)).eval()
    both = model.with_cameras(BOTH).eval()
    assert model.camera_emb is None and both.camera_emb.shape == (2, 1, 32)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(both.state_dict()[name], value)
    assert both.config.prefix_len == model.config.prefix_len + 1 + model.config.num_patches  # keypoints + patches
    images, text = both.config.fake_inputs(2)  # (2, 2, 32, 32, 3)
    state = torch.from_numpy(fake_state(2))
    other_wrist = images.clone()
    other_wrist[:, 1] = 255 - other_wrist[:, 1]
    with torch.no_grad():
        out = both(images, text, state=state)
        assert not torch.allclose(out, both(other_wrist, text, state=state)), "the wrist image reaches the output"
        with pytest.raises(ValueError, match=r"images must be \(B, 2, 32, 32, 3\)"):
            both(images[:, 0], text, state=state)
    with pytest.raises(ValueError, match="cameras"):
        VLAConfig.preset("tabletop", cameras=("wrist",))


def test_the_wrist_image_is_required_and_checked():
    image = np.zeros((8, 8, 3), np.uint8)
    assert camera_images({}, image, ("scene",)) is image
    with pytest.raises(PolicyInputError, match="wrist_image"):
        camera_images({}, image, BOTH)
    with pytest.raises(PolicyInputError, match="must be uint8"):
        camera_images({"wrist_image": np.zeros((4, 4, 3), np.uint8)}, image, BOTH)
    assert camera_images({"wrist_image": image + 1}, image, BOTH).shape == (2, 8, 8, 3)


def test_finetune_adds_the_wrist_camera_and_the_closed_loop_sends_it(robot, tmp_path):
    opts = TrainOptions(steps=1, batch_size=2, ckpt_every=1, log_every=1, progress=False)
    config = VLAConfig.preset("tabletop", **SMALL)
    base = finetune_actions("scratch", [robot], tmp_path / "a", config=config, opts=opts, encoder=FakeEncoder())
    r = finetune_actions(base.checkpoint, [robot], tmp_path / "b", cameras=BOTH, opts=opts, encoder=FakeEncoder())
    _, loaded, _ = load_vla(r.checkpoint)
    assert loaded.cameras == BOTH
    policy = TorchPolicy(r.checkpoint, text_encoder=FakeEncoder(), num_threads=1)
    assert policy.metadata["cameras"] == list(BOTH)
    executor = ClosedLoopExecutor(policy, image_size=32)
    frame = np.zeros((64, 64, 3), np.uint8)
    obs = Observation(frame, fake_state(1)[0], "reach the red block", wrist=frame)
    assert executor(obs).shape == (7,)  # both images resized to the model's 32 px and sent
    with pytest.raises(PolicyInputError, match="wrist_image"):
        executor.reset()
        executor(Observation(frame, fake_state(1)[0], "reach the red block"))


@pytest.fixture(scope="module")
def exported_wrist(tmp_path_factory):
    """A small tabletop model with the wrist camera, exported to ONNX (parity checked at export)."""
    from bench.random_models import random_checkpoint, random_text_encoder
    from export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("export_wrist")
    ckpt = random_checkpoint(root / "ckpt", preset="tabletop", **{**SMALL, "text_dim": 32}, cameras=BOTH)
    text = random_text_encoder(root / "text_encoder", hidden=32)
    doc = export_onnx(ckpt, root / "out", text_encoder_dir=text, exporter="legacy", parity_samples=16,
                      log=lambda _m: None)
    return root / "out", doc


def test_export_takes_the_wrist_image_as_its_own_input(exported_wrist):
    from export.ort_policy import OrtPolicy

    out, doc = exported_wrist
    assert doc["cameras"] == list(BOTH) and doc["policy_inputs"][:3] == ["image", "wrist_image", "text_emb"]
    assert doc["parity"]["policy"]["passed"]
    policy = OrtPolicy(out, threads=1)
    assert policy.metadata["cameras"] == list(BOTH)
    rng = np.random.default_rng(0)
    image, wrist = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    obs = {"image": image, "wrist_image": wrist, "instruction": "pick up the red block", "state": fake_state(1)[0]}
    first = policy.infer(obs)["actions"]
    second = policy.infer({**obs, "wrist_image": 255 - wrist})["actions"]
    assert np.abs(first - second).max() > 1e-6, "the wrist image reaches the graph"
    with pytest.raises(PolicyInputError, match="wrist_image"):
        policy.infer({k: v for k, v in obs.items() if k != "wrist_image"})


def test_the_server_parses_the_wrist_image_and_names_it_when_it_is_bad():
    from policy_server.observation import InputLimits, RequestError, parse_request

    image = np.zeros((64, 64, 3), np.uint8)
    request = parse_request({"image": image, "wrist_image": image + 7, "instruction": "pick up the red block"},
                            (32, 32), InputLimits())
    assert request.obs["wrist_image"].shape == (32, 32, 3) and request.obs["wrist_image"].max() == 7
    assert "wrist_image" not in parse_request({"image": image, "instruction": "reach"}, (32, 32), InputLimits()).obs
    with pytest.raises(RequestError, match="'wrist_image' must be uint8"):
        parse_request({"image": image, "wrist_image": image.astype(np.float32), "instruction": "reach"},
                      (32, 32), InputLimits())
