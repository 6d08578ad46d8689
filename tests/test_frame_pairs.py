"""Frame pairs for LAQ: gap in seconds, both dataset kinds, corrupt clips skipped."""

import itertools

import numpy as np
import pytest

from lapa.data.frame_pairs import ClipCatalog, FramePairStream, gap_frames, iter_pairs, pair_batches
from lapa.data.lerobot_v3 import LeRobotV3Writer
from lapa.data.video_folder import VideoFolderWriter
from lapa.errors import UserError


def _moving_square(t: int, size: int = 32) -> np.ndarray:
    """Frames whose content encodes the frame index: a bright square moving right."""
    f = np.zeros((t, size, size, 3), np.uint8)
    for i in range(t):
        x = 2 + i
        f[i, 10:18, x:x + 6] = 255
    return f


@pytest.fixture()
def video_set(tmp_path):
    root = tmp_path / "videos"
    w = VideoFolderWriter(root)
    w.add("a", _moving_square(20), 10, "push the red block left")
    w.add("b", _moving_square(20), 10, "lift the blue block")
    w.finalize()
    return root


@pytest.fixture()
def robot_set(tmp_path):
    root = tmp_path / "robot"
    w = LeRobotV3Writer(root, fps=10, image_shape=(32, 32, 3))
    actions = np.zeros((20, 7), np.float32)
    actions[:, 0] = 0.01
    w.add_episode(_moving_square(20), np.zeros((20, 8), np.float32), actions, "reach the red block")
    w.finalize()
    return root


def test_gap_in_seconds_uses_each_clips_fps():
    assert gap_frames(0.6, 10) == 6
    assert gap_frames(0.6, 30) == 18
    assert gap_frames(0.01, 10) == 1
    with pytest.raises(ValueError):
        gap_frames(0.0, 10)


def test_pairs_from_both_dataset_kinds(video_set, robot_set):
    catalog = ClipCatalog([video_set, robot_set])
    assert len(catalog) == 3
    records = list(iter_pairs(catalog, image_size=32, gap_s=0.6))
    assert len(records) == 3 * (20 - 6)
    for r in records:
        assert r.pair.shape == (2, 32, 32, 3) and r.gap == 6
        # The square moved right by `gap` pixels between the two frames.
        cols = [np.flatnonzero(f[14, :, 0] > 128).min() for f in r.pair]
        assert cols[1] - cols[0] == pytest.approx(6, abs=1)
    robot = [r for r in records if r.action_sum is not None]
    assert len(robot) == 14 and robot[0].instruction == "reach the red block"
    assert robot[0].action_sum[0] == pytest.approx(0.06)


def test_stream_skips_a_corrupt_clip_and_counts_it(video_set, caplog):
    (video_set / "a.mp4").write_bytes(b"not a video at all")
    catalog = ClipCatalog([video_set])
    stream = FramePairStream(catalog, image_size=16, gap_s=0.3, pairs_per_clip=4)
    pairs = list(itertools.islice(iter(stream), 12))
    assert all(p.shape == (2, 16, 16, 3) and p.dtype == np.uint8 for p in pairs)
    assert stream.skipped >= 1
    assert "skipping unreadable clip" in caplog.text


def test_batches_from_worker_processes(video_set):
    batches = pair_batches(ClipCatalog([video_set]), image_size=16, batch_size=5, gap_s=0.3, workers=2)
    batch = next(batches)
    assert tuple(batch.shape) == (5, 2, 16, 16, 3)


def test_no_readable_clip_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ClipCatalog([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no clips"):
        ClipCatalog([empty])
