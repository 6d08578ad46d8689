"""LeRobot v3.0: read what lerobot wrote, write what lerobot reads (schemas checked against its files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from lapa.data.lerobot_v3 import DatasetError, LeRobotV3Dataset, LeRobotV3Writer
from lapa.data.video_io import VideoReadError, read_frames_at

SAMPLE = Path(__file__).resolve().parent / "fixtures" / "lerobot_v3_sample"  # written by lerobot 0.6.1
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
DATA = "data/chunk-000/file-000.parquet"
VIDEO = "videos/observation.images.scene/chunk-000/file-000.mp4"
WRIST = "observation.images.wrist"


@pytest.fixture(scope="module")
def sample() -> Path:
    assert SAMPLE.is_dir(), f"the LeRobot fixture is missing: {SAMPLE}"
    return SAMPLE


def synthetic_episode(k: int, t: int, h: int = 32, w: int = 32, seed: int = 0):
    """Frames whose red level rises with the frame index and blue level encodes the episode."""
    rng = np.random.default_rng(seed + k)
    yy, xx = np.mgrid[:h, :w]
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, ..., 0] = 10 + 8 * i + xx
        frames[i, ..., 1] = 30 + 2 * yy
        frames[i, ..., 2] = 40 + 60 * k
    states = rng.standard_normal((t, 8)).astype(np.float32)
    actions = rng.standard_normal((t, 7)).astype(np.float32)
    return frames, states, actions


TASKS = ["pick up the red block", "open the drawer", "pick up the red block"]
LENGTHS = [12, 9, 15]  # odd lengths: episodes do not start on the encoder's 2-frame GOP grid


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[np.ndarray, ...]]]:
    root = tmp_path_factory.mktemp("written") / "ds"
    episodes = [synthetic_episode(k, n) for k, n in enumerate(LENGTHS)]
    writer = LeRobotV3Writer(root, fps=10, image_shape=(32, 32, 3))
    for (frames, states, actions), task in zip(episodes, TASKS, strict=True):
        writer.add_episode(frames, states, actions, task)
    assert writer.finalize() == root
    return root, episodes


# ------------------------------------------------------------------------------ reading lerobot's


def test_reads_fixture_metadata(sample: Path) -> None:
    ds = LeRobotV3Dataset(sample)
    assert (ds.fps, ds.num_episodes, ds.num_frames) == (10.0, 3, 60)
    assert ds.video_keys == ["observation.images.scene"]
    assert ds.tasks == ["pick the red cube", "open the drawer"]
    assert ds.info["codebase_version"] == "v3.0" and len(ds) == 3


def test_reads_fixture_episodes(sample: Path) -> None:
    ds = LeRobotV3Dataset(sample)
    for k, task in enumerate(["pick the red cube", "open the drawer", "pick the red cube"]):
        ep = ds.episode(k)
        assert (ep.index, ep.task, ep.fps) == (k, task, 10.0)
        assert ep.frames.shape == (20, 128, 128, 3) and ep.frames.dtype == np.uint8
        assert ep.states.shape == (20, 8) and ep.states.dtype == np.float32
        assert ep.actions.shape == (20, 7) and ep.actions.dtype == np.float32
        frame = np.arange(20, dtype=np.float32)[:, None]
        np.testing.assert_array_equal(ep.states, np.broadcast_to(100 * k + frame, (20, 8)))
        np.testing.assert_array_equal(ep.actions, 100 * k + frame + np.arange(7, dtype=np.float32))
        np.testing.assert_allclose(ep.timestamps, np.arange(20) / 10, atol=1e-6)
        # blue encodes the episode (0, 80, 160); red moves with the frame index
        assert abs(ep.frames[..., 2].mean() - 80 * k) < 3
        red = ep.frames[:, :, :32, 0].reshape(20, -1).mean(axis=1)
        assert np.all(np.diff(red) > 0)


def test_fixture_episode_frames_come_from_the_right_place(sample: Path) -> None:
    ds = LeRobotV3Dataset(sample)
    whole = read_frames_at(sample / VIDEO, np.arange(60) / 10)
    np.testing.assert_array_equal(ds.episode(1).frames, whole[20:40])


def test_reader_errors(sample: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        LeRobotV3Dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a LeRobot dataset"):
        LeRobotV3Dataset(tmp_path / "empty")

    old = tmp_path / "old"
    shutil.copytree(sample, old)
    info = json.loads((old / "meta/info.json").read_text())
    (old / "meta/info.json").unlink()
    (old / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DatasetError, match="v2.1"):
        LeRobotV3Dataset(old)
    (old / "meta/info.json").unlink()
    (old / "meta/info.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        LeRobotV3Dataset(old)

    ds = LeRobotV3Dataset(sample)
    for bad in (3, -1, 100):
        with pytest.raises(DatasetError, match="out of range"):
            ds.episode(bad)
    with pytest.raises(DatasetError, match="no video key"):
        ds.episode(0, video_key="observation.images.wrist")


def test_corrupt_video_raises_video_read_error(sample: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sample, broken)
    video = broken / VIDEO
    video.chmod(0o644)
    video.write_bytes(b"\x00" * 1000)
    with pytest.raises(VideoReadError, match="file-000.mp4"):
        LeRobotV3Dataset(broken).episode(0)


# ------------------------------------------------------------------------------- writing our own


def test_round_trip(written: tuple[Path, list]) -> None:
    root, episodes = written
    ds = LeRobotV3Dataset(root)
    assert (ds.fps, ds.num_episodes, ds.num_frames) == (10.0, 3, sum(LENGTHS))
    assert ds.tasks == ["pick up the red block", "open the drawer"]
    assert ds.video_keys == ["observation.images.scene"]
    for k, (frames, states, actions) in enumerate(episodes):
        ep = ds.episode(k)
        assert ep.task == TASKS[k]
        np.testing.assert_array_equal(ep.states, states)
        np.testing.assert_array_equal(ep.actions, actions)
        np.testing.assert_array_equal(ep.timestamps, (np.arange(LENGTHS[k]) / 10).astype(np.float32))
        assert ep.frames.shape == frames.shape
        assert np.abs(ep.frames.astype(np.int16) - frames).mean() < 4.0
        red = ep.frames[..., 0].reshape(len(frames), -1).mean(axis=1)
        np.testing.assert_allclose(red, frames[..., 0].reshape(len(frames), -1).mean(axis=1), atol=3)


def test_parquet_rows(written: tuple[Path, list]) -> None:
    root, _ = written
    data = pq.read_table(root / DATA).to_pydict()
    n = sum(LENGTHS)
    assert data["index"] == list(range(n))
    assert data["frame_index"] == [i for length in LENGTHS for i in range(length)]
    assert data["episode_index"] == [k for k, length in enumerate(LENGTHS) for _ in range(length)]
    assert data["task_index"] == [0] * 12 + [1] * 9 + [0] * 15
    episodes = pq.read_table(root / EPISODES).to_pydict()
    assert episodes["length"] == LENGTHS
    assert episodes["dataset_from_index"] == [0, 12, 21]
    assert episodes["dataset_to_index"] == [12, 21, 36]
    assert episodes["tasks"] == [[t] for t in TASKS]
    start = episodes["videos/observation.images.scene/from_timestamp"]
    end = episodes["videos/observation.images.scene/to_timestamp"]
    assert start == [0.0, 1.2, 2.1] and end == [1.2, 2.1, 3.6]  # episode k starts where k-1 ended
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pydict()
    assert tasks == {"task_index": [0, 1], "task": ["pick up the red block", "open the drawer"]}


def _keys_tree(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _keys_tree(v) for k, v in obj.items()}
    return type(obj).__name__


def test_layout_matches_lerobot(sample: Path, written: tuple[Path, list]) -> None:
    root, _ = written
    ours = json.loads((root / "meta/info.json").read_text())
    theirs = json.loads((sample / "meta/info.json").read_text())
    assert list(ours) == list(theirs)
    assert list(ours["features"]) == list(theirs["features"])
    for name, feature in theirs["features"].items():
        assert _keys_tree(ours["features"][name]) == _keys_tree(feature), name
        assert ours["features"][name]["dtype"] == feature["dtype"]
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index", "observation.state"):
        assert ours["features"][key]["shape"] == theirs["features"][key]["shape"]
    for key in ("chunks_size", "data_path", "video_path", "data_files_size_in_mb", "video_files_size_in_mb"):
        assert ours[key] == theirs[key]
    assert ours["splits"] == {"train": "0:3"} and ours["total_frames"] == sum(LENGTHS)
    video_info = ours["features"]["observation.images.scene"]["info"]
    assert video_info["video.pix_fmt"] == "yuv420p" and video_info["video.fps"] == 10
    assert ours["features"]["observation.images.scene"]["shape"] == [32, 32, 3]

    for rel in (DATA, EPISODES, "meta/tasks.parquet"):
        our_schema, their_schema = pq.read_schema(root / rel), pq.read_schema(sample / rel)
        assert our_schema.equals(their_schema), rel  # names, order and types (incl. list child names)
        assert set(our_schema.metadata or {}) == set(their_schema.metadata or {}), rel

    hf = json.loads(pq.read_schema(root / DATA).metadata[b"huggingface"])
    their_hf = json.loads(pq.read_schema(sample / DATA).metadata[b"huggingface"])
    assert hf["info"] == their_hf["info"]
    pandas = json.loads(pq.read_schema(root / "meta/tasks.parquet").metadata[b"pandas"])
    their_pandas = json.loads(pq.read_schema(sample / "meta/tasks.parquet").metadata[b"pandas"])
    for key in ("index_columns", "column_indexes", "columns"):
        assert pandas[key] == their_pandas[key]

    our_stats = json.loads((root / "meta/stats.json").read_text())
    their_stats = json.loads((sample / "meta/stats.json").read_text())
    assert set(our_stats) == set(their_stats)
    for name, stats in their_stats.items():
        assert set(our_stats[name]) == set(stats)
        for stat, value in stats.items():
            assert np.shape(our_stats[name][stat]) == np.shape(value), (name, stat)


def test_stats_agree_with_lerobot(sample: Path, tmp_path: Path) -> None:
    """Re-write lerobot's own sample: min/max/mean/std/count must come out as lerobot computed them."""
    src = LeRobotV3Dataset(sample)
    root = tmp_path / "copy"
    with LeRobotV3Writer(root, fps=10, image_shape=(128, 128, 3), robot_type="sim_arm") as writer:
        for k in range(src.num_episodes):
            ep = src.episode(k)
            writer.add_episode(ep.frames, ep.states, ep.actions, ep.task)
    ours, theirs = pq.read_table(root / EPISODES).to_pydict(), pq.read_table(sample / EPISODES).to_pydict()
    for feature in ("observation.state", "action", "timestamp", "frame_index", "episode_index", "index"):
        for stat in ("min", "max", "mean", "std", "count"):
            column = f"stats/{feature}/{stat}"
            np.testing.assert_allclose(ours[column], theirs[column], rtol=1e-6, err_msg=column)
    for stat in ("mean", "std"):
        column = f"stats/observation.images.scene/{stat}"  # video was re-encoded: close, not equal
        np.testing.assert_allclose(ours[column], theirs[column], atol=0.02, err_msg=column)
    our_stats = json.loads((root / "meta/stats.json").read_text())
    their_stats = json.loads((sample / "meta/stats.json").read_text())
    for stat in ("min", "max", "mean", "std", "count"):
        np.testing.assert_allclose(our_stats["action"][stat], their_stats["action"][stat], rtol=1e-6)
    assert LeRobotV3Dataset(root).tasks == src.tasks


def test_extra_video_keys(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = LeRobotV3Writer(root, fps=15, image_shape=(32, 32, 3), extra_video_keys=[WRIST])
    episodes = [synthetic_episode(k, 6) for k in range(2)]
    wrists = [synthetic_episode(k + 2, 6, h=16, w=24)[0] for k in range(2)]
    for (frames, states, actions), wrist in zip(episodes, wrists, strict=True):
        writer.add_episode(frames, states, actions, "wave", extra_frames={WRIST: wrist})
    writer.finalize()
    ds = LeRobotV3Dataset(root)
    assert ds.video_keys == ["observation.images.scene", WRIST]
    assert ds.info["features"][WRIST]["shape"] == [16, 24, 3]
    ep = ds.episode(1, video_key=WRIST)
    assert ep.frames.shape == (6, 16, 24, 3)
    assert np.abs(ep.frames.astype(np.int16) - wrists[1]).mean() < 4.0
    assert ds.episode(1).frames.shape == (6, 32, 32, 3)


def test_finalize_is_atomic(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = LeRobotV3Writer(root, fps=10, image_shape=(32, 32, 3))
    writer.add_episode(*synthetic_episode(0, 4), "task")
    assert not root.exists()
    (scratch,) = tmp_path.iterdir()
    assert scratch.name.startswith(".ds.")  # hidden work directory next to root
    writer.finalize()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert LeRobotV3Dataset(root).num_frames == 4
    with pytest.raises(RuntimeError, match="finalized"):
        writer.add_episode(*synthetic_episode(0, 4), "task")


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt), LeRobotV3Writer(root, fps=10, image_shape=(32, 32, 3)) as w:
        w.add_episode(*synthetic_episode(0, 4), "task")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    empty = LeRobotV3Writer(root, fps=10, image_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="no episodes"), empty:
        pass
    assert list(tmp_path.iterdir()) == []


def test_overwrite_rules(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    LeRobotV3Writer(root, fps=10, image_shape=(32, 32, 3)).abort()  # an empty root is fine
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        LeRobotV3Writer(root, fps=10, image_shape=(32, 32, 3))
    with pytest.raises(FileExistsError, match="not a LeRobot dataset"):
        LeRobotV3Writer(root, fps=10, image_shape=(32, 32, 3), overwrite=True)
    assert (root / "notes.txt").read_text() == "keep me"

    (root / "notes.txt").unlink()
    for length in (4, 6):
        writer = LeRobotV3Writer(root, fps=10, image_shape=(32, 32, 3), overwrite=True)
        writer.add_episode(*synthetic_episode(0, length), "task")
        writer.finalize()
        assert LeRobotV3Dataset(root).num_frames == length
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_bad_inputs_raise_and_leave_writer_usable(tmp_path: Path) -> None:
    writer = LeRobotV3Writer(tmp_path / "ds", fps=10, image_shape=(32, 32, 3))
    frames, states, actions = synthetic_episode(0, 5)
    nan_states = states.copy()
    nan_states[2, 3] = np.nan
    bad_calls = {
        "shaped": (frames[:, :16], states, actions, "t"),
        "uint8": (frames.astype(np.float32), states, actions, "t"),
        "row 2, column 3": (frames, nan_states, actions, "t"),
        r"states must be shaped \(5, 8\)": (frames, states[:4], actions, "t"),
        r"actions must be shaped \(5, 7\)": (frames, states, actions[:, :6], "t"),
        "float array": (frames, states.astype(np.int64), actions, "t"),
        "task": (frames, states, actions, "  "),
        "empty": (frames[:0], states[:0], actions[:0], "t"),
    }
    for message, args in bad_calls.items():
        with pytest.raises(ValueError, match=message):
            writer.add_episode(*args)
    with pytest.raises(ValueError, match="extra_frames"):
        writer.add_episode(frames, states, actions, "t", extra_frames={WRIST: frames})
    writer.add_episode(frames, states.astype(np.float64), actions, "t")  # float64 is cast
    writer.finalize()
    assert LeRobotV3Dataset(tmp_path / "ds").num_episodes == 1

    for kwargs in ({"image_shape": (31, 32, 3)}, {"image_shape": (32, 32)}, {"fps": 0}, {"fps": 7.5},
                   {"state_dim": 0}):
        with pytest.raises(ValueError):
            LeRobotV3Writer(tmp_path / "other", **{"fps": 10, "image_shape": (32, 32, 3), **kwargs})
    assert not (tmp_path / "other").exists()
