"""The policy recipe's parts: FiLM conv encoder, proprio state token, l1 head with the goal query,
random-shift augmentation, and expert recordings with DART noise that continue to the final pose."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vla_fakes import FakeEncoder, fit_tokenizer

from lapa.policy.checkpoint_io import load_vla
from lapa.policy.config import VLAConfig
from lapa.policy.datasets import ActionSet, apply_augmentation, shift_images
from lapa.policy.model import VLA, FiLM, state_features
from lapa.policy.train import TrainOptions, compute_loss, finetune_actions
from lapa.sim.env import TabletopEnv, episode_task, run_episode
from lapa.sim.expert import ScriptedExpert
from lapa.sim.fast_driver import FastDriver
from lapa.sim.record import ExpertOptions, record_dataset
from lapa.sim.scene import SceneConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, chunk_size=2, num_bins=16, keypoints=0,
             goal_aux=False)


def _model(**overrides) -> VLA:
    config = VLAConfig.preset("tabletop", head="action", **{**SMALL, **overrides})
    torch.manual_seed(0)
    return VLA(config, fit_tokenizer(num_bins=config.num_bins)).eval()


def _state(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(batch, 8, generator=g)
    s[:, 3] += 2.5  # roll near pi, as a gripper pointing down
    return s


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    """4 reach episodes recorded past the success check, with DART noise and settle steps."""
    root = tmp_path_factory.mktemp("data") / "robot"
    record_dataset("reach", 4, root, seed=3, image_size=32, progress=False,
                   expert=ExpertOptions(noise_m=0.0, dart_noise_m=0.004, until_done=True, settle_steps=3))
    return root


# ----------------------------------------------------------------------------- model parts


def test_conv_encoder_makes_one_token_per_cell_and_film_starts_as_identity():
    model = _model()
    assert model.conv_encoder is not None and model.patch_embed is None
    films = [m for m in model.modules() if isinstance(m, FiLM)]
    assert films and all(torch.count_nonzero(f.proj.weight) == 0 for f in films)
    images, text = model.config.fake_inputs(3)
    prefix = model.embed_prefix(images, text, _state(3))
    assert prefix.shape == (3, model.config.prefix_len, 32) and model.config.prefix_len == 1 + 1 + 16


def test_film_makes_the_image_tokens_depend_on_the_instruction():
    model = _model()
    for f in model.modules():
        if isinstance(f, FiLM):
            torch.nn.init.normal_(f.proj.weight, std=0.5)
    images, text = model.config.fake_inputs(2)
    same_image = images[:1].expand(2, -1, -1, -1)
    tokens, _ = model.conv_encoder(same_image.permute(0, 3, 1, 2).float() / 127.5 - 1, model.text_norm(text))
    assert not torch.allclose(tokens[0], tokens[1], atol=1e-4)
    no_film = _model(film=False)
    assert not any(isinstance(m, FiLM) for m in no_film.modules())


def test_state_changes_the_prediction_and_none_uses_the_no_state_token():
    model = _model()
    images, text = model.config.fake_inputs(2)
    a = model(images, text, state=_state(2, 0))
    b = model(images, text, state=_state(2, 1))
    assert a.shape == (2, 2, 7) and not torch.allclose(a, b)
    c = model(images, text)  # the learned "no state" token
    assert torch.isfinite(c).all()
    with pytest.raises(ValueError, match="state must be"):
        model(images, text, state=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="no state input"):
        _model(state_dim=0)(images, text, state=_state(2))


def test_state_features_are_continuous_across_the_roll_wrap():
    s = torch.zeros(2, 8)
    s[0, 3], s[1, 3] = np.pi - 1e-4, -np.pi + 1e-4
    f = state_features(s)
    assert f.shape == (2, 10) and torch.allclose(f[0], f[1], atol=1e-3)


def test_l1_head_decodes_within_the_expert_range_and_reports_nearest_bins():
    model = _model()
    head = model.action_head
    images, text = model.config.fake_inputs(4)
    bins, actions = model.predict_actions(images, text, state=_state(4))
    assert bins.dtype == torch.int64 and actions.shape == (4, 2, 7)
    tok = fit_tokenizer(num_bins=16)
    lo, hi = np.array(tok.stats["q01"]), np.array(tok.stats["q99"])
    motion = actions[..., :6].numpy()
    assert np.all(motion >= lo[:6] - 1e-6) and np.all(motion <= hi[:6] + 1e-6)
    assert torch.equal(head.nearest_bins(head.decode(bins)), bins)
    target = torch.tensor(tok.stats["q99"]).expand(1, 1, 7)
    assert torch.allclose(head.normalize(target)[..., :6], torch.ones(6))
    with pytest.raises(ValueError, match="one pass"):
        model.predict_actions(images, text, decoder="autoregressive", state=_state(4))


def test_goal_query_adds_one_query_and_does_not_change_the_action_shape():
    model = _model(goal_aux=True)
    assert model.config.num_queries == model.config.chunk_size + 1
    images, text = model.config.fake_inputs(2)
    actions, goal = model.action_outputs(images, text, _state(2))
    assert actions.shape == (2, 2, 7) and goal.shape == (2, 3)
    assert torch.allclose(model(images, text, state=_state(2)), actions)


# ----------------------------------------------------------------------------- augmentation


def test_random_shift_moves_whole_pixels_within_the_pad():
    rng = np.random.default_rng(0)
    images = torch.zeros(8, 16, 16, 3, dtype=torch.uint8)
    images[:, 8, 8] = 255  # one bright pixel
    out = shift_images(images, rng, pad=2)
    assert out.shape == (8, 16, 16, 3) and out.dtype == torch.float32
    for b in range(8):
        y, x = np.argwhere(out[b, :, :, 0].numpy() == 1.0)[0]
        assert abs(y - 8) <= 2 and abs(x - 8) <= 2
    assert apply_augmentation(images, rng, False) is images
    with pytest.raises(ValueError, match="augment"):
        apply_augmentation(images, rng, "blur")


# ----------------------------------------------------------------------------- data


def test_until_done_records_the_final_approach_and_the_hold():
    with FastDriver(SceneConfig(image_size=32)) as driver:
        env = TabletopEnv(driver)
        task, instruction = episode_task("reach", 5)
        short = run_episode(env, task, 5, instruction=instruction)
        long = run_episode(env, task, 5, instruction=instruction, stop_on_success=False, settle_steps=4)
    assert short.success and long.success and long.steps > short.steps
    assert np.all(long.actions[-5:, :6] == 0.0), "the expert holds still at the end"


def test_dart_records_the_clean_action_and_executes_a_noisy_one():
    with FastDriver(SceneConfig(image_size=32), render=False) as driver:
        env = TabletopEnv(driver)
        task, instruction = episode_task("reach", 9)
        clean = run_episode(env, task, 9, instruction=instruction, stop_on_success=False)
        dart = run_episode(env, task, 9, instruction=instruction, stop_on_success=False, dart_noise_m=0.005)
    # same first observation and clean first action; the executed noise moves the states apart
    assert np.allclose(clean.actions[0], dart.actions[0])
    assert not np.allclose(clean.states[3], dart.states[3])
    # recorded translations are the expert's bounded steps, never the noisy ones
    assert np.all(np.linalg.norm(dart.actions[:, :3], axis=1) <= 0.02 + 1e-6)


def test_faded_dart_noise_lets_the_expert_settle_for_a_grasp():
    """Full noise at every step keeps the TCP out of the grasp's 4 mm tolerance: the pick expert
    dithers at the block until the time limit. Faded near the waypoint, it grasps and lifts."""
    steps = {}
    with FastDriver(SceneConfig(image_size=32), render=False) as driver:
        env = TabletopEnv(driver)
        for fade in (0.0, 0.03):
            runs = []
            for seed in (200000, 200001):
                task, instruction = episode_task("pick", seed)
                runs.append(run_episode(env, task, seed, instruction=instruction, stop_on_success=False,
                                        dart_noise_m=0.005, dart_fade_m=fade))
            assert all(r.success for r in runs)
            steps[fade] = [r.steps for r in runs]
    assert steps[0.0] == [60, 60], "with full noise both episodes run into the time limit"
    assert max(steps[0.03]) < 45, steps


def test_the_expert_reports_no_distance_while_it_holds():
    with FastDriver(SceneConfig(image_size=32), render=False) as driver:
        env = TabletopEnv(driver)
        task, instruction = episode_task("pick", 3)
        env.reset(task, 3, instruction)
        expert = ScriptedExpert(task, driver)
        assert expert.distance_to_target_m(driver) > 0.05  # home is well above the hover point
        while not expert._held:
            env.step(expert.act(driver))
        assert expert.distance_to_target_m(driver) == 0.0


def test_action_set_carries_states_and_episode_goals(robot):
    data = ActionSet.from_lerobot([robot], 32, 2, FakeEncoder())
    data.set_tokenizer(fit_tokenizer(num_bins=16))
    batch = data.batch(np.arange(len(data)))
    assert batch.states.shape == (len(data), 8) and batch.goals.shape == (len(data), 3)
    # every sample of an episode has that episode's last EE position as its goal
    first_episode = data.goal_rows == data.goal_rows[0]
    assert torch.all(batch.goals[first_episode] == batch.goals[0])
    assert torch.allclose(batch.goals[0], torch.from_numpy(data.clips.states[data.goal_rows[0], :3]))
    assert data.goal_target == "final"
    before = data.goal_rows.copy()
    data.use_keyframe_goals()  # reach never moves the gripper: the goal stays the episode's end
    np.testing.assert_array_equal(data.goal_rows, before)


def test_keyframe_goals_are_the_grasp_until_it_happens_then_the_end(tmp_path):
    root = tmp_path / "pick"
    record_dataset("pick", 2, root, seed=3, image_size=32, progress=False,
                   expert=ExpertOptions(noise_m=0.0, until_done=True))
    data = ActionSet.from_lerobot([root], 32, 2, FakeEncoder())
    data.use_keyframe_goals()
    assert data.goal_target == "keyframe"
    acts = data.actions[0]  # (n, 7) the first episode
    grasp = int(np.flatnonzero(acts[:, 6] < 0.5)[0])  # the first frame commanding a closed gripper
    start, last = data.clips.offsets[0], data.clips.offsets[1] - 1
    goals = data.goal_rows[: len(acts)]
    assert np.all(goals[:grasp] == start + grasp)  # approaching: where it will grasp
    assert goals[grasp] != start + grasp and np.all(goals[grasp:] > start + grasp)  # then the next event or the end
    assert goals[-1] == last
    grasp_xyz = data.clips.states[start + grasp, :3]
    block_height_m = grasp_xyz[2]
    assert block_height_m < data.clips.states[last, 2]  # the grasp is lower than the lifted end


def test_mixture_weights_set_each_dataset_share_of_the_batches(tmp_path):
    from lapa.errors import UserError

    roots = [tmp_path / "reach", tmp_path / "pick"]
    for family, root in zip(("reach", "pick"), roots, strict=True):
        record_dataset(family, 2, root, seed=5, image_size=32, progress=False)
    data = ActionSet.from_lerobot(roots, 32, 2, FakeEncoder())
    data.set_tokenizer(fit_tokenizer(num_bins=16))
    reach, pick = (str(r) for r in roots)
    assert data.share_of(reach) + data.share_of(pick) == pytest.approx(1.0)
    data.set_mixture({reach: 1.0, pick: 3.0})
    assert data.share_of(pick) == pytest.approx(0.75)
    drawn = []  # the sample indices every draw asks for
    batch = data.batch
    data.batch = lambda idx: (drawn.append(idx), batch(idx))[1]
    for seed in range(20):
        data.sample(np.random.default_rng(seed), 64)
    roots_drawn = np.array([data.clips.keys[c][0] for c in data.sample_clip[np.concatenate(drawn)]])  # (1280,)
    assert 0.7 < np.mean(roots_drawn == pick) < 0.8
    with pytest.raises(UserError, match="mixture weights name"):
        data.set_mixture({reach: 1.0})
    with pytest.raises(UserError, match="> 0"):
        data.set_mixture({reach: 1.0, pick: 0.0})
    with pytest.raises(UserError, match="one data weight per dataset"):
        finetune_actions("scratch", roots, tmp_path / "run", data_weights=[1.0], encoder=FakeEncoder())
    with pytest.raises(UserError, match="--text-tokens"):  # word dropout acts on the token form only
        finetune_actions("scratch", roots, tmp_path / "run", encoder=FakeEncoder(),
                         opts=TrainOptions(steps=0, word_dropout=0.1, progress=False))
    with pytest.raises(UserError, match="--text-tokens"):  # and so does word noise
        finetune_actions("scratch", roots, tmp_path / "run", encoder=FakeEncoder(),
                         opts=TrainOptions(steps=0, word_noise=0.3, progress=False))


def test_tabletop_recipe_trains_from_scratch_and_round_trips(robot, tmp_path):
    config = VLAConfig.preset("tabletop", **{**SMALL, "goal_aux": True, "keypoints": 4})
    opts = TrainOptions(steps=2, batch_size=4, ckpt_every=2, log_every=1, progress=False, augment="shift")
    r = finetune_actions("scratch", [robot], tmp_path / "ft", config=config, opts=opts, encoder=FakeEncoder())
    model, loaded, tok = load_vla(r.checkpoint)
    assert loaded.action_output == "l1" and loaded.state_dim == 8 and loaded.goal_aux and np.isfinite(r.final_loss)
    data = ActionSet.from_lerobot([robot], 32, 2, FakeEncoder())
    data.set_tokenizer(tok)
    loss, stats = compute_loss(model, data.batch(np.arange(4)))
    assert torch.isfinite(loss) and "goal_mae_mm" in stats and "translation_mae_mm" in stats
    from lapa.policy.checkpoint_io import checkpoint_extra

    provenance = checkpoint_extra(r.checkpoint)["provenance"]
    assert provenance["data_shares"] == {str(robot): 1.0} and provenance["data_weights"] is None


def test_the_recording_size_travels_with_the_checkpoint(robot, tmp_path):
    """Evaluation renders at the recordings' size (then resizes as the data was), also where the
    training data is not on disk: a shipped model keeps the size in its provenance."""
    import shutil

    from lapa.eval.closed_loop import recording_image_size
    from lapa.policy.checkpoint_io import checkpoint_extra

    data = tmp_path / "data"
    shutil.copytree(robot, data)
    config = VLAConfig.preset("tabletop", **SMALL)
    opts = TrainOptions(steps=1, batch_size=2, ckpt_every=1, log_every=1, progress=False)
    r = finetune_actions("scratch", [data], tmp_path / "ft", config=config, opts=opts, encoder=FakeEncoder())
    assert checkpoint_extra(r.checkpoint)["provenance"]["recording_image_size"] == 32
    shutil.rmtree(data)
    assert recording_image_size(r.checkpoint) == 32


def test_keypoints_add_one_token_of_image_coordinates_selected_by_the_instruction():
    model = _model(keypoints=4)
    assert model.config.prefix_len == 1 + 1 + 1 + 16
    for f in model.modules():
        if isinstance(f, FiLM):
            torch.nn.init.normal_(f.proj.weight, std=0.5)
    images, text = model.config.fake_inputs(2)
    same_image = images[:1].expand(2, -1, -1, -1)
    prefix = model.embed_prefix(same_image, text, _state(1).expand(2, -1))
    assert prefix.shape == (2, model.config.prefix_len, 32)
    assert not torch.allclose(prefix[0, 2], prefix[1, 2], atol=1e-5), "the keypoint token follows the instruction"
    with pytest.raises(ValueError, match="keypoints need the conv encoder"):
        VLAConfig.preset("tiny", keypoints=4)


def test_random_start_moves_the_gripper_before_the_episode_and_is_seeded():
    from lapa.sim.env import move_to_random_start

    with FastDriver(SceneConfig(image_size=32), render=False) as driver:
        env = TabletopEnv(driver)
        task, instruction = episode_task("reach", 4)
        env.reset(task, 4, instruction)
        home = driver.robot_state().ee_pos_m
        obs = move_to_random_start(env, np.random.default_rng([4, 17]), 0.1)
        start = driver.robot_state().ee_pos_m
        assert env.steps == 0 and np.allclose(obs.state[:3], start)
        assert 0.005 < np.linalg.norm(start - home) and np.all(np.abs(start - home)[:2] <= 0.1 + 0.005)
        assert start[2] <= home[2] + 0.005
        result = run_episode(env, task, 4, instruction=instruction, start_jitter_m=0.1)
        assert result.success and np.allclose(result.states[0, :3], start, atol=1e-3), "same seed, same start"


def test_a_missed_grasp_start_closes_on_nothing_beside_the_block_and_the_expert_recovers():
    from lapa.errors import UserError
    from lapa.sim.env import EMPTY_GRIP_M, MISS_MIN_OFFSET_M, move_to_missed_grasp

    with FastDriver(SceneConfig(image_size=32), render=False) as driver:
        env = TabletopEnv(driver)
        for family, seed in (("pick", 3), ("put", 8)):
            task, instruction = episode_task(family, seed)
            result = run_episode(env, task, seed, instruction=instruction, stop_on_success=False,
                                 missed_grasp_m=0.05)
            start = result.states[0]  # (8,) the first recorded state
            block_xy = driver.block_pose(task.colour)[0][:2] if family == "put" else None
            assert start[6] + start[7] < EMPTY_GRIP_M, "the fingers start closed on nothing"
            assert result.actions[0, 6] >= 0.5, "the expert's first action opens the gripper again"
            assert result.success, f"the expert recovers from the missed {family} grasp"
            if block_xy is not None:  # put leaves the lifted block on the target: it was grasped after all
                assert np.linalg.norm(block_xy - driver.block_pose(task.target)[0][:2]) < 0.02
        task, instruction = episode_task("pick", 3)
        env.reset(task, 3, instruction)
        block = driver.block_pose(task.colour)[0]
        obs = move_to_missed_grasp(env, task, np.random.default_rng([3, 19]), 0.05)
        offset = np.linalg.norm(obs.state[:2] - block[:2])
        assert MISS_MIN_OFFSET_M - 0.005 <= offset <= 0.05 + 0.005 and env.steps == 0
    with pytest.raises(UserError, match="at least"):
        ExpertOptions(missed_grasp_m=0.02)


def test_paraphrase_draws_training_wordings_of_the_same_task_never_held_out_ones(robot):
    from lapa.sim.tasks import FAMILIES, parse_instruction

    data = ActionSet.from_lerobot([robot], 32, 2, FakeEncoder(), paraphrase=True)
    data.set_tokenizer(fit_tokenizer(num_bins=16))
    held_out = {t.format(colour=c) for t in FAMILIES["reach"].held_out_templates
                for c in ("red", "green", "blue", "yellow")}
    assert not held_out & set(data.table.texts)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        idx = rng.integers(0, len(data), 16)
        batch = data.batch(idx)
        drawn = data.sample(np.random.default_rng(int(rng.integers(1 << 30))), 16)
        seen |= {data.table.texts[i] for i in data.wording_ids.ravel()}
        assert torch.equal(batch.text, data.table.embeddings[data.text_ids[idx]]), "batch() keeps the recording's"
        assert drawn.text.shape == batch.text.shape
    recorded = parse_instruction(data.clips.instructions[0])
    assert set(recorded.wordings()) <= seen and len(seen) > len(set(data.clips.instructions))


def test_broad_paraphrase_draws_from_the_broad_wordings(robot):
    from lapa.sim.tasks import parse_instruction

    data = ActionSet.from_lerobot([robot], 32, 2, FakeEncoder(), paraphrase="broad")
    recorded = parse_instruction(data.clips.instructions[0])
    assert set(recorded.wordings(broad=True)) <= set(data.table.texts)
    assert data.wording_ids.shape[1] >= len(recorded.wordings(broad=True))
