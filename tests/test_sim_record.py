"""Recording: LeRobot v3 datasets and action-free video sets that read back, resumably."""

import json
import os

import numpy as np
import pytest

from lapa.cli import main as lapa_main
from lapa.data.lerobot_v3 import LeRobotV3Dataset
from lapa.data.video_folder import VideoFolder
from lapa.errors import UserError
from lapa.sim import record as record_module
from lapa.sim.env import TabletopEnv
from lapa.sim.fast_driver import FastDriver
from lapa.sim.record import record_dataset
from lapa.sim.scene import SceneConfig
from lapa.sim.tasks import parse_instruction


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_lerobot_dataset_reads_back_and_matches_a_replay(tmp_path):
    out = tmp_path / "robot"
    summary = record_dataset("reach", 2, out, seed=10, image_size=64, progress=False)
    assert summary.episodes == 2 and not (tmp_path / "robot.partial").exists()

    ds = LeRobotV3Dataset(out)
    assert ds.num_episodes == 2 and ds.fps == 10
    recording = json.loads((out / "meta" / "lapa_recording.json").read_text())
    features = json.loads((out / "meta" / "info.json").read_text())["features"]
    assert features["observation.state"]["names"][:3] == ["x_m", "y_m", "z_m"]
    assert features["action"]["names"] == ["dx_m", "dy_m", "dz_m", "droll_rad", "dpitch_rad", "dyaw_rad", "gripper"]
    with FastDriver(SceneConfig(image_size=64)) as driver:
        env = TabletopEnv(driver)
        for i in range(2):
            ep = ds.episode(i)
            meta = recording["episodes_meta"][i]
            task = parse_instruction(ep.task)
            assert task is not None and task.name == meta["task_name"]
            assert len(ep.frames) == len(ep.states) == len(ep.actions) == meta["steps"] + 1
            # The simulator is deterministic: replaying the recorded actions reproduces the
            # recorded states exactly and frames up to video compression.
            obs = env.reset(task, meta["seed"], ep.task)
            states, frames = [obs.state], [obs.image]
            for action in ep.actions[:-1]:  # the last row is the final observation's hold
                obs = env.step(action)
                states.append(obs.state)
                frames.append(obs.image)
            assert env.success
            np.testing.assert_allclose(ep.states, np.stack(states), atol=1e-6)
            assert _psnr(ep.frames, np.stack(frames)) > 27  # AV1 at crf 30, as lerobot encodes


def test_action_free_video_set(tmp_path):
    out = tmp_path / "videos"
    record_dataset("default", 4, out, seed=3, no_actions=True, image_size=64, progress=False)
    videos = VideoFolder(out)
    assert len(videos) == 4
    families = set()
    for i in range(4):
        clip = videos[i]
        task = parse_instruction(clip.instruction)
        assert task is not None, clip.instruction
        families.add(task.family)
        frames, fps = videos.read(i)
        assert frames.shape[1:] == (64, 64, 3) and fps == pytest.approx(10)
    assert families == {"reach", "push", "pick", "put"}
    assert not list(out.glob("*.parquet")), "an action-free set holds no action tables"


def test_recording_resumes_after_an_interruption(tmp_path, monkeypatch):
    out = tmp_path / "robot"
    original_add = record_module._LeRobotSink.add

    def crash_on_third(self, index, result):
        if index == 2:
            raise KeyboardInterrupt
        original_add(self, index, result)

    monkeypatch.setattr(record_module._LeRobotSink, "add", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        record_dataset("reach", 3, out, image_size=32, progress=False)
    assert not out.exists(), "an interrupted recording must not look like a dataset"
    monkeypatch.setattr(record_module._LeRobotSink, "add", original_add)

    summary = record_dataset("reach", 3, out, image_size=32, progress=False)
    assert summary.resumed_episodes == 2 and summary.attempts == 1
    assert LeRobotV3Dataset(out).num_episodes == 3


@pytest.mark.skipif(not os.path.isdir("/proc/1"), reason="needs Linux /proc")
def test_unwritable_output_is_a_clear_error():
    # /proc refuses new files even to root, so this holds in CI as well.
    with pytest.raises(UserError, match="not writable"):
        record_dataset("reach", 1, "/proc/1/lapa-out", progress=False)


def test_output_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="cannot create"):
        record_dataset("reach", 1, blocker / "sub" / "out", progress=False)


def test_existing_output_and_bad_arguments_are_refused(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        record_dataset("reach", 1, out, progress=False)
    assert lapa_main(["sim", "record", "--suite", "kitchen", "--episodes", "1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown suite" in capsys.readouterr().err
    assert lapa_main(["sim", "record", "--episodes", "0", "--out", str(tmp_path / "y")]) == 2


def test_sim_play_writes_a_video(tmp_path, capsys):
    out = tmp_path / "pick.mp4"
    assert lapa_main(["sim", "play", "--task", "pick_red", "--out", str(out), "--image-size", "64"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["success"] and out.stat().st_size > 1000
    assert lapa_main(["sim", "play", "--task", "pick_purple", "--out", str(out)]) == 2
    assert "unknown colour" in capsys.readouterr().err
