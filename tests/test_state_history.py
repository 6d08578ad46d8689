"""State history: one layout for training samples, the closed-loop evaluation and the ROS node."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from vla_fakes import FakeEncoder, fit_tokenizer

from lapa.action import fake_state
from lapa.eval.closed_loop import ClosedLoopExecutor
from lapa.policy.checkpoint_io import load_vla
from lapa.policy.cli import _lags
from lapa.policy.config import VLAConfig
from lapa.policy.datasets import ActionSet
from lapa.policy.model import VLA, history_features
from lapa.policy.train import TrainOptions, finetune_actions
from lapa.sim.env import Observation
from lapa.sim.record import ExpertOptions, record_dataset
from lapa.state_history import StateHistory, check_lags, history_rows, state_input_dim

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, chunk_size=2, num_bins=16, keypoints=0,
             goal_aux=False)
LAGS = (1, 3)


def _tick_state(t: int) -> np.ndarray:
    s = np.zeros(8, np.float32)
    s[0] = t  # the tick the state belongs to
    return s


@pytest.mark.parametrize("bad", [(0,), (3, 3), (5, 2), (1.5,), (True,), (101,)])
def test_lags_must_be_increasing_positive_ints(bad):
    with pytest.raises(ValueError):
        check_lags(bad)


def test_history_starts_with_the_first_state_and_then_looks_back_by_each_lag():
    history = StateHistory(LAGS)
    picked = [history.push(_tick_state(t)).reshape(3, 8)[:, 0].tolist() for t in range(6)]
    assert picked[0] == [0, 0, 0]  # before the episode has the lags, its first state stands in
    assert picked[2] == [2, 1, 0]
    assert picked[5] == [5, 4, 2]
    history.reset()
    assert history.push(_tick_state(9)).reshape(3, 8)[:, 0].tolist() == [9, 9, 9]
    with pytest.raises(ValueError):
        history.push(np.zeros(7, np.float32))


def test_training_rows_and_the_live_history_agree():
    """The dataset's history_rows and the node's StateHistory give the same vector at every tick."""
    lags = (2, 5)
    states = np.stack([_tick_state(t) for t in range(9)])  # one episode, rows 0..8
    history = StateHistory(lags)
    for t in range(9):
        live = history.push(states[t])
        rows = history_rows(np.array([t]), np.array([0]), lags)[0]
        np.testing.assert_array_equal(live, states[rows].reshape(-1))


def test_a_model_given_a_history_starts_as_the_model_without_one():
    torch.manual_seed(0)
    model = VLA(VLAConfig.preset("tabletop", head="action", **SMALL), fit_tokenizer(num_bins=16)).eval()
    with_history = model.with_state_history(LAGS).eval()
    images, text = model.config.fake_inputs(2)
    state = torch.from_numpy(fake_state(2, dim=state_input_dim(LAGS)))  # (2, 24)
    with torch.no_grad():
        assert torch.equal(model(images, text, state=state[:, :8]), with_history(images, text, state=state))
        with pytest.raises(ValueError, match="state must be"):
            with_history(images, text, state=state[:, :8])
    assert with_history.config.state_input_dim == 24 and model.config.state_history == ()


def test_history_features_are_the_displacements_since_each_lag():
    now = np.array([0.5, 0.0, 0.1, np.pi, 0, 0, 0.04, 0.04], np.float32)
    past = now.copy()
    past[:3] -= (0.1, 0.0, -0.05)  # 10 cm behind in x, 5 cm higher
    feats = history_features(torch.from_numpy(np.concatenate([now, past])[None]), 1)  # (1, 4)
    np.testing.assert_allclose(feats[0].numpy(), [1.0, 0.0, -0.5, 0.0], atol=1e-5)


def test_history_needs_a_state_input_and_survives_config_json():
    with pytest.raises(ValueError, match="state_dim"):
        VLAConfig.preset("tiny", state_history=(2,))
    config = VLAConfig.preset("tabletop", state_history=(2, 4))
    assert VLAConfig.from_dict({**config.to_dict(), "state_history": [2, 4]}) == config


def test_cli_parses_lags():
    assert _lags("3,6,12") == (3, 6, 12) and _lags("none") == ()
    with pytest.raises(argparse.ArgumentTypeError):
        _lags("6,3")


class RecordingPolicy:
    def __init__(self):
        self.states: list[np.ndarray] = []

    def infer(self, obs):
        self.states.append(obs["state"])
        return {"actions": np.zeros((4, 7), np.float32)}

    def reset(self):
        pass


@pytest.mark.parametrize("mode,n", [("first_n", 1), ("first_n", 2), ("ensemble", 1)])
def test_closed_loop_records_the_history_every_tick_even_between_requests(mode, n):
    policy = RecordingPolicy()
    ex = ClosedLoopExecutor(policy, mode, n, state_history=LAGS)
    for t in range(6):
        ex(Observation(np.zeros((8, 8, 3), np.uint8), _tick_state(t), "reach the red block"))
    asked = [s.reshape(3, 8)[:, 0].tolist() for s in policy.states]
    expected = {t: [t, max(t - 1, 0), max(t - 3, 0)] for t in range(6)}
    assert asked == [expected[t] for t in range(0, 6, n)]
    ex.reset()
    ex(Observation(np.zeros((8, 8, 3), np.uint8), _tick_state(7), "reach the red block"))
    assert policy.states[-1].reshape(3, 8)[:, 0].tolist() == [7, 7, 7]


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "robot"
    record_dataset("reach", 2, root, seed=5, image_size=32, progress=False,
                   expert=ExpertOptions(noise_m=0.0, until_done=True))
    return root


def test_action_samples_look_back_within_their_own_episode(robot):
    data = ActionSet.from_lerobot([robot], 32, 2, FakeEncoder())
    data.set_tokenizer(fit_tokenizer(num_bins=16))
    data.state_lags = LAGS
    idx = np.arange(len(data))
    states = data.batch(idx).states.numpy().reshape(len(idx), 3, 8)  # (N, 1 + H, 8)
    rows = data.frame_rows[idx]
    starts = data.clips.offsets[data.sample_clip[idx]]
    for j, lag in enumerate((0, *LAGS)):
        np.testing.assert_array_equal(states[:, j], data.clips.states[np.maximum(rows - lag, starts)])


def test_finetune_adds_a_history_to_a_checkpoint_without_one(robot, tmp_path):
    opts = TrainOptions(steps=1, batch_size=2, ckpt_every=1, log_every=1, progress=False)
    config = VLAConfig.preset("tabletop", **SMALL)
    base = finetune_actions("scratch", [robot], tmp_path / "a", config=config, opts=opts, encoder=FakeEncoder())
    opts = TrainOptions(steps=2, batch_size=2, ckpt_every=2, log_every=1, progress=False)
    r = finetune_actions(base.checkpoint, [robot], tmp_path / "b", state_history=LAGS, opts=opts,
                         encoder=FakeEncoder())
    model, loaded, _ = load_vla(r.checkpoint)
    assert loaded.state_history == LAGS and model.history_proj is not None


# ----------------------------------------------------------------------------- the serving path


@pytest.fixture(scope="module")
def exported_history(tmp_path_factory):
    """A small tabletop model with a state history whose projection is not zero, exported to ONNX."""
    from bench.random_models import random_checkpoint, random_text_encoder
    from export.onnx_export import export_onnx
    from lapa.policy.checkpoint_io import save_vla

    root = tmp_path_factory.mktemp("export_history")
    ckpt = random_checkpoint(root / "ckpt", preset="tabletop", **{**SMALL, "text_dim": 32}, state_history=LAGS)
    model, config, tokenizer = load_vla(ckpt)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.history_proj.weight, std=0.5)  # the history path must show in the outputs
    save_vla(ckpt, model.eval(), config, tokenizer)
    text = random_text_encoder(root / "text_encoder", hidden=32)
    doc = export_onnx(ckpt, root / "out", text_encoder_dir=text, exporter="legacy", parity_samples=16,
                      log=lambda _m: None)
    return ckpt, root / "out", doc


def test_export_keeps_the_history_in_the_graph_and_the_metadata(exported_history):
    from export.ort_policy import OrtPolicy
    from lapa.policy_protocol import PolicyInputError

    ckpt, out, doc = exported_history
    assert doc["state_dim"] == 24 and doc["state_history"] == list(LAGS) and doc["parity"]["policy"]["passed"]
    policy = OrtPolicy(out, threads=1)
    assert policy.metadata["state_dim"] == 24 and policy.metadata["state_history"] == list(LAGS)
    model, config, _ = load_vla(ckpt)
    image = config.fake_inputs(1, seed=4)[0][0].numpy()
    states = fake_state(2, seed=5, dim=24)
    moved = states[1].copy()
    moved[:8] = states[0][:8]  # the same current state, another history
    replies = [policy.infer({"image": image, "instruction": "push the red block left", "state": s})
               for s in (states[0], moved)]
    assert np.abs(replies[0]["actions"] - replies[1]["actions"]).max() > 1e-5, "the history reaches the graph"
    with pytest.raises(PolicyInputError, match="24"):
        policy.infer({"image": image, "instruction": "push the red block left", "state": states[0][:8]})
