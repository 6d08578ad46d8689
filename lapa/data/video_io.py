"""Video decoding and encoding with PyAV.

PyAV (not OpenCV) because the OpenCV wheel cannot decode AV1, which is what lerobot writes.
Frames are always uint8 RGB arrays shaped (T, H, W, 3).

Timestamps: encoded frames get pts = i in a 1/fps time base, so frame i sits exactly at i/fps.
The mp4 muxer rescales to a finer time base (e.g. 1/10240 at 10 fps) that keeps this exact;
webm (Matroska) stores milliseconds, so there frame times are rounded to 1 ms.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lapa.errors import UserError

# Encoders in order of preference per container. H.264 first: lerobot reads it as well as AV1, and
# libsvtav1 (lerobot 0.6's default: g=2, crf=30, preset=12), when run as root, switches the calling
# thread and its own workers to SCHED_FIFO 99, which starves every other process on a 2-core robot
# computer (the control loop among them). libsvtav1 stays available by name; write_video then puts
# the calling thread's scheduling back (see _keep_scheduling).
_MP4_CODECS = ("libx264", "libsvtav1", "libaom-av1", "mpeg4")
_WEBM_CODECS = ("libvpx-vp9", "libvpx")
_CODEC_OPTIONS: dict[str, dict[str, str]] = {
    "libsvtav1": {"g": "2", "crf": "30", "preset": "12"},
    "libaom-av1": {"g": "2", "crf": "30", "cpu-used": "8", "row-mt": "1"},
    "libx264": {"g": "2", "crf": "18", "preset": "veryfast"},
    "mpeg4": {"g": "2", "flags": "+qscale", "global_quality": str(2 * 118)},  # ~ ffmpeg -q:v 2
    "libvpx-vp9": {"g": "2", "crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8"},
    "libvpx": {"g": "2", "crf": "10", "b": "2M", "deadline": "realtime", "cpu-used": "8"},
}
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
PIX_FMT = "yuv420p"

# lerobot's own tolerance when it looks up a frame by timestamp.
TIMESTAMP_TOLERANCE_S = 1e-4


class VideoReadError(UserError):
    """A video file is missing, corrupt, truncated or cannot be decoded. The message names the file."""


def encoder_available(name: str) -> bool:
    """True if this PyAV/FFmpeg build can encode with `name`."""
    if name not in av.codecs_available:
        return False
    try:
        av.Codec(name, "w")
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    return True


def encoder_options(codec: str) -> dict[str, str]:
    """The FFmpeg options write_video passes to `codec` (keyframe interval, quality)."""
    return dict(_CODEC_OPTIONS.get(codec, {}))


def default_codec(path: str | os.PathLike[str]) -> str:
    """The encoder write_video uses for `path` when none is given (AV1 for mp4, VP9 for webm)."""
    is_webm = Path(path).suffix.lower() == ".webm"
    for name in _WEBM_CODECS if is_webm else _MP4_CODECS:
        if encoder_available(name):
            return name
    raise RuntimeError(f"no usable video encoder for {path} in this PyAV build")


def _fail(path: Path, what: str, exc: BaseException | None = None) -> VideoReadError:
    detail = f": {exc}" if exc is not None else ""
    return VideoReadError(f"cannot read video {path}: {what}{detail}")


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise _fail(path, "file not found")
    try:
        container = av.open(str(path), "r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise _fail(path, "not a readable video container", exc) from exc
    if not container.streams.video:
        container.close()
        raise _fail(path, "no video stream")
    return container


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _frame_time(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> float:
    if frame.pts is None:
        raise ValueError("decoded frame has no pts")
    time_base = frame.time_base or stream.time_base
    return float(frame.pts * time_base)


def read_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Decode every frame of the first video stream.

    Returns frames (T, H, W, 3) uint8 RGB and the stream's frame rate.
    """
    path = Path(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream)
        frames, last_t = [], 0.0
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if frame.pts is not None:
                last_t = _frame_time(frame, stream)
        _check_complete(container, stream, len(frames), last_t, fps, path)
    except VideoReadError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise _fail(path, "decoding failed", exc) from exc
    finally:
        container.close()
    return np.stack(frames), fps  # (T, H, W, 3)


def _check_complete(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    n_frames: int,
    last_t: float,
    fps: float,
    path: Path,
) -> None:
    """Detect truncation: decoders often stop quietly at a cut, so compare with the header."""
    if n_frames == 0:
        raise _fail(path, "no frames decoded")
    if stream.frames:  # mp4 records the frame count
        if n_frames < stream.frames:
            raise _fail(path, f"truncated: decoded {n_frames} of {stream.frames} frames")
        return
    # Matroska/webm record only the duration (written when the file is closed). Skip files with
    # audio, whose duration may be the audio's.
    if container.duration and fps > 0 and not container.streams.audio:
        period = 1.0 / fps
        duration = container.duration / av.time_base
        if last_t + period < duration - max(2 * period, 0.05):
            raise _fail(path, f"truncated: frames end at {last_t + period:.3f} s of {duration:.3f} s")


def read_frames_at(
    path: str | os.PathLike[str],
    timestamps_s: Sequence[float],
    tolerance_s: float = TIMESTAMP_TOLERANCE_S,
) -> np.ndarray:
    """Frames whose presentation time matches each timestamp (seconds) within `tolerance_s`.

    Returns (N, H, W, 3) uint8 RGB in the order of `timestamps_s`. Seeks to the keyframe before
    the earliest timestamp and decodes forward, so reading one episode out of a concatenated
    LeRobot mp4 does not decode the whole file. Raises VideoReadError if any timestamp has no
    frame within the tolerance (the default is lerobot's 1e-4 s; webm stores milliseconds, so
    pass a larger tolerance for webm at frame rates that do not divide 1000).
    """
    path = Path(path)
    wanted = np.asarray(timestamps_s, dtype=np.float64).reshape(-1)  # (N,)
    if wanted.size == 0:
        raise ValueError("read_frames_at needs at least one timestamp")
    if not np.all(np.isfinite(wanted)):
        raise ValueError(f"non-finite timestamp requested from {path}")
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        out = _decode_matching(container, stream, wanted, tolerance_s, seek=True)
        if out is None:  # the seek landed after the first wanted frame: decode from the start
            container.seek(0, stream=stream, backward=True)
            out = _decode_matching(container, stream, wanted, tolerance_s, seek=False)
    except VideoReadError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise _fail(path, "decoding failed", exc) from exc
    finally:
        container.close()
    assert out is not None
    frames, errors, nearest = out
    missing = np.flatnonzero(errors > tolerance_s)
    if missing.size:
        i = int(missing[0])
        raise _fail(
            path,
            f"{missing.size} of {wanted.size} timestamps have no frame within {tolerance_s:g} s "
            f"(first: {wanted[i]:.6f} s, nearest frame at {nearest[i]:.6f} s)",
        )
    return np.stack(frames)  # (N, H, W, 3)


def _decode_matching(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    wanted: np.ndarray,
    tolerance_s: float,
    seek: bool,
) -> tuple[list[np.ndarray | None], np.ndarray, np.ndarray] | None:
    """Decode forward, keeping for each wanted time the closest frame. None if the seek overshot."""
    first, last = float(wanted.min()), float(wanted.max())
    if seek and first > 0:
        offset = int(np.floor((first - tolerance_s) / float(stream.time_base)))
        container.seek(max(offset, 0), stream=stream, backward=True)
    errors = np.full(wanted.shape, np.inf)  # |frame time - wanted| of the best frame so far
    nearest = np.full(wanted.shape, np.nan)
    frames: list[np.ndarray | None] = [None] * wanted.size
    first_frame = True
    for frame in container.decode(stream):
        t = _frame_time(frame, stream)
        if first_frame and seek and t > first + tolerance_s:
            return None
        first_frame = False
        err = np.abs(wanted - t)
        better = err < errors
        if better.any():
            errors[better] = err[better]
            nearest[better] = t
            close = better & (err <= tolerance_s)
            if close.any():
                rgb = frame.to_ndarray(format="rgb24")
                for i in np.flatnonzero(close):
                    frames[i] = rgb
        if t > last + tolerance_s:
            break
    if seek and first_frame:
        return None
    return frames, errors, nearest


@contextlib.contextmanager
def _keep_scheduling():
    """Restore the calling thread's scheduling policy if an encoder library changed it."""
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy:
            os.sched_setscheduler(0, policy, param)


class VideoWriter:
    """Streaming encoder: frames can be appended in several batches (e.g. one per episode).

    Writes to a temporary file next to `path` and renames it into place in close(), so a crash
    never leaves a half-written file under the final name. Frame i gets pts i / fps exactly.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: int,
        codec: str | None = None,
    ) -> None:
        self.path = Path(path)
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps!r}")
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(
                f"video frames must have even, positive height and width for {PIX_FMT}, "
                f"got {height}x{width} (crop or pad by one pixel)"
            )
        self.fps = int(fps)
        self.width, self.height = int(width), int(height)
        suffix = self.path.suffix.lower()
        if suffix not in _FORMATS:
            raise ValueError(f"unsupported video extension {suffix!r} for {self.path} (use .mp4 or .webm)")
        self.codec = codec or default_codec(self.path)
        if not encoder_available(self.codec):
            raise ValueError(f"video encoder {self.codec!r} is not available in this PyAV build")
        self.frames_written = 0
        self._closed = False

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".tmp{suffix}", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per encoder unless told not to
        try:
            self._container = av.open(str(self._tmp), "w", format=_FORMATS[suffix])
            self._stream = self._container.add_stream(
                self.codec, rate=self.fps, options=encoder_options(self.codec)
            )
            self._stream.width, self._stream.height = self.width, self.height
            self._stream.pix_fmt = PIX_FMT
            self._stream.codec_context.time_base = Fraction(1, self.fps)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def write(self, frames: np.ndarray, keyframe_first: bool = False) -> None:
        """Append frames (N, H, W, 3) uint8 RGB. `keyframe_first` forces an I-frame at the first one."""
        if self._closed:
            raise RuntimeError(f"video writer for {self.path} is closed")
        check_frames(frames, f"frames for {self.path.name}")
        if frames.shape[1:3] != (self.height, self.width):
            raise ValueError(
                f"frames are {frames.shape[1]}x{frames.shape[2]}, video {self.path.name} is "
                f"{self.height}x{self.width}"
            )
        time_base = Fraction(1, self.fps)
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = time_base
            if keyframe_first and k == 0:
                frame.pict_type = av.video.frame.PictureType.I
            with _keep_scheduling():  # the encoder opens lazily, on the first frame
                packets = self._stream.encode(frame)
            for packet in packets:
                self._container.mux(packet)
            self.frames_written += 1

    def close(self) -> Path:
        """Flush the encoder and move the file into place. Returns the final path."""
        if self._closed:
            raise RuntimeError(f"video writer for {self.path} is closed")
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"no frames were written to {self.path}")
        try:
            with _keep_scheduling():
                packets = self._stream.encode()
            for packet in packets:
                self._container.mux(packet)
            with _keep_scheduling():
                self._container.close()
            fsync_file(self._tmp)
            os.replace(self._tmp, self.path)
            fsync_dir(self.path.parent)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the final path is left untouched."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stream.encode(None)  # end of stream, so the encoder shuts down quietly
        except Exception:  # noqa: BLE001 - already failing, only cleaning up
            pass
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - already failing, only cleaning up
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(
    path: str | os.PathLike[str], frames: np.ndarray, fps: int, codec: str | None = None
) -> Path:
    """Encode frames (T, H, W, 3) uint8 RGB to `path` atomically. H and W must be even.

    Default codec: H.264 (libx264, keyframe every 2 frames, like lerobot's g=2) for mp4, VP9 for webm;
    see default_codec(). Returns the path written.
    """
    check_frames(frames, "frames")
    with VideoWriter(path, width=frames.shape[2], height=frames.shape[1], fps=fps, codec=codec) as writer:
        writer.write(frames)
    return Path(path)


def probe_video(path: str | os.PathLike[str]) -> dict[str, object]:
    """Stream facts in the shape of lerobot's `info` block of a video feature."""
    path = Path(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        return {
            "video.height": int(ctx.height),
            "video.width": int(ctx.width),
            "video.codec": stream.codec.canonical_name if stream.codec else ctx.name,
            "video.pix_fmt": ctx.pix_fmt,
            "video.fps": _stream_fps(stream),
            "video.channels": 3,
            "has_audio": bool(container.streams.audio),
        }
    finally:
        container.close()


def check_frames(frames: object, what: str) -> None:
    """Raise ValueError unless `frames` is a non-empty uint8 array shaped (T, H, W, 3)."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{what} must be shaped (T, H, W, 3), got {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError(f"{what} is empty (T = 0)")


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data to disk (before renaming it into place)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry (after a rename); best effort, not every filesystem allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
