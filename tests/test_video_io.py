"""Video decode/encode with PyAV: codecs, exact timestamps, atomic writes, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from lapa.data.video_io import (
    VideoReadError,
    VideoWriter,
    default_codec,
    encoder_available,
    probe_video,
    read_frames_at,
    read_video,
    write_video,
)

SAMPLE = Path(__file__).resolve().parent / "fixtures" / "lerobot_v3_sample"  # written by lerobot 0.6.1
SAMPLE_VIDEO = SAMPLE / "videos" / "observation.images.scene" / "chunk-000" / "file-000.mp4"


def moving_frames(t: int = 12, h: int = 32, w: int = 48) -> np.ndarray:
    """(t, h, w, 3) uint8: smooth gradients; the red level rises by 12 per frame, so frames are telling."""
    yy, xx = np.mgrid[:h, :w]
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, ..., 0] = 20 + 12 * i + xx
        frames[i, ..., 1] = 40 + 2 * yy
        frames[i, ..., 2] = 128
    return frames


def red_levels(frames: np.ndarray) -> np.ndarray:
    return frames[..., 0].reshape(len(frames), -1).mean(axis=1)  # (T,)


def test_default_codec_is_h264_for_mp4() -> None:
    if encoder_available("libx264"):
        assert default_codec("clip.mp4") == "libx264"
    assert default_codec("clip.webm") in ("libvpx-vp9", "libvpx")
    assert encoder_available(default_codec("clip.mp4"))
    assert not encoder_available("no-such-encoder")


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [(".mp4", None), (".webm", None), (".mp4", "mpeg4"), (".mp4", "libx264"), (".mp4", "libsvtav1")],
)
def test_round_trip(tmp_path: Path, suffix: str, codec: str | None) -> None:
    if codec is not None and not encoder_available(codec):
        pytest.skip(f"{codec} encoder not in this PyAV build")
    frames = moving_frames()
    path = write_video(tmp_path / f"clip{suffix}", frames, fps=10, codec=codec)
    decoded, fps = read_video(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert fps == pytest.approx(10.0)
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 4.0
    np.testing.assert_allclose(red_levels(decoded), red_levels(frames), atol=3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"clip{suffix}"]  # no temp files left


def test_default_mp4_is_h264_yuv420p(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", moving_frames(4), fps=10)
    info = probe_video(path)
    if default_codec(path) == "libx264":
        assert info["video.codec"] == "h264"
    assert info["video.pix_fmt"] == "yuv420p"
    assert (info["video.height"], info["video.width"]) == (32, 48)


@pytest.mark.parametrize("fps", [10, 15, 30])
def test_timestamps_are_exact_multiples_of_frame_period(tmp_path: Path, fps: int) -> None:
    frames = moving_frames(9)
    path = write_video(tmp_path / "clip.mp4", frames, fps=fps)
    with av.open(str(path)) as container:
        times = [frame.pts * frame.time_base for frame in container.decode(video=0)]
    assert [float(t) for t in times] == [i / fps for i in range(9)]
    # every frame is found with lerobot's 1e-4 s tolerance
    picked = read_frames_at(path, [i / fps for i in range(9)])
    np.testing.assert_allclose(red_levels(picked), red_levels(frames), atol=3.0)


def test_read_frames_at_keeps_request_order(tmp_path: Path) -> None:
    frames = moving_frames(20)
    path = write_video(tmp_path / "clip.mp4", frames, fps=10)
    all_frames, _ = read_video(path)
    picked = read_frames_at(path, [1.5, 0.2, 1.9, 0.2])
    np.testing.assert_array_equal(picked, all_frames[[15, 2, 19, 2]])


def test_read_frames_at_rejects_timestamps_without_a_frame(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", moving_frames(10), fps=10)
    with pytest.raises(VideoReadError, match="clip.mp4.*no frame within"):
        read_frames_at(path, [0.05])
    with pytest.raises(VideoReadError, match="no frame within"):
        read_frames_at(path, [1.0])  # one past the end
    with pytest.raises(ValueError):
        read_frames_at(path, [])


def test_reads_lerobot_av1_fixture() -> None:
    frames, fps = read_video(SAMPLE_VIDEO)
    assert frames.shape == (60, 128, 128, 3) and fps == 10.0
    picked = read_frames_at(SAMPLE_VIDEO, [2.0, 2.1, 5.9])
    np.testing.assert_array_equal(picked, frames[[20, 21, 59]])


def test_write_validates_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", moving_frames(3, h=31), fps=10)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "float.mp4", moving_frames(3).astype(np.float32), fps=10)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        write_video(tmp_path / "gray.mp4", moving_frames(3)[..., 0], fps=10)
    with pytest.raises(ValueError, match="empty"):
        write_video(tmp_path / "empty.mp4", moving_frames(3)[:0], fps=10)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "fps.mp4", moving_frames(3), fps=0)
    with pytest.raises(ValueError, match="extension"):
        write_video(tmp_path / "clip.gif", moving_frames(3), fps=10)
    with pytest.raises(ValueError, match="not available"):
        write_video(tmp_path / "clip.mp4", moving_frames(3), fps=10, codec="no-such-encoder")
    assert list(tmp_path.iterdir()) == []


def test_writer_is_atomic(tmp_path: Path) -> None:
    final = tmp_path / "clip.mp4"
    final.write_bytes(b"previous version")
    writer = VideoWriter(final, width=48, height=32, fps=10)
    writer.write(moving_frames(4))
    assert final.read_bytes() == b"previous version"  # nothing visible until close()
    writer.abort()
    assert final.read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]

    with pytest.raises(RuntimeError), VideoWriter(final, width=48, height=32, fps=10) as w:
        w.write(moving_frames(2))
        raise RuntimeError("crash mid-write")
    assert final.read_bytes() == b"previous version"

    with VideoWriter(final, width=48, height=32, fps=10) as w:
        w.write(moving_frames(3))
        w.write(moving_frames(2))  # several batches continue the timeline
    assert read_video(final)[0].shape == (5, 32, 48, 3)
    assert read_frames_at(final, [0.4]).shape == (1, 32, 48, 3)


def test_missing_and_corrupt_videos_raise_video_read_error(tmp_path: Path) -> None:
    with pytest.raises(VideoReadError, match="nothing.mp4.*not found"):
        read_video(tmp_path / "nothing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 50)
    with pytest.raises(VideoReadError, match="garbage.mp4"):
        read_video(garbage)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty.mp4"):
        read_frames_at(empty, [0.0])


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_truncated_video_raises(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)  # noise: a big file to cut
    path = write_video(tmp_path / f"clip{suffix}", frames, fps=10)
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match=f"cut{suffix}"):
        read_video(cut)


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="no POSIX scheduling API on this OS")
@pytest.mark.parametrize("codec", ["libx264", "libsvtav1"])
def test_encoding_leaves_the_callers_scheduling_alone(tmp_path: Path, codec: str) -> None:
    """libsvtav1 run as root switches the calling thread to SCHED_FIFO; every thread and process
    started afterwards would inherit it and starve the machine."""
    if not encoder_available(codec):
        pytest.skip(f"{codec} encoder not in this PyAV build")
    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    write_video(tmp_path / "clip.mp4", moving_frames(4), fps=10, codec=codec)
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before
