"""Read and write LeRobot v3.0 datasets with pyarrow + PyAV (lerobot itself needs Python >= 3.12).

The layout mirrors what lerobot 0.6.1 writes (see /work/shared/REFERENCE.md):

    meta/info.json  meta/stats.json  meta/tasks.parquet
    meta/episodes/chunk-000/file-000.parquet     one row per episode (+ per-episode stats)
    data/chunk-000/file-000.parquet              one row per frame, all episodes
    videos/<video_key>/chunk-000/file-000.mp4    all episodes back to back

Episode k's video starts at `from_timestamp` (where episode k-1 ended); frame i of the episode is
the video frame at from_timestamp + timestamp[i], matched within 1e-4 s like lerobot does.
The writer keeps everything in one chunk/file; the reader follows whatever indices the
episodes table names.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import operator
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lapa.data.video_io import (
    VideoWriter,
    check_frames,
    default_codec,
    encoder_available,
    encoder_options,
    fsync_dir,
    fsync_file,
    probe_video,
    read_frames_at,
)
from lapa.errors import UserError

CODEBASE_VERSION = "v3.0"
DEFAULT_VIDEO_KEY = "observation.images.scene"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# Columns lerobot adds to every frame, in its order: name -> (dtype in info.json, arrow type)
AUTO_FEATURES: dict[str, tuple[str, pa.DataType]] = {
    "timestamp": ("float32", pa.float32()),
    "frame_index": ("int64", pa.int64()),
    "episode_index": ("int64", pa.int64()),
    "index": ("int64", pa.int64()),
    "task_index": ("int64", pa.int64()),
}



def lerobot_codec() -> str:
    """The encoder of LeRobot datasets: lerobot 0.6's own (libsvtav1, g=2, crf=30, preset=12) when
    this PyAV build has it, so `info.json` says what lerobot would; else the mp4 default."""
    return "libsvtav1" if encoder_available("libsvtav1") else default_codec("x.mp4")

class DatasetError(UserError):
    """A dataset root that is missing, malformed, of another version, or asked for a bad episode."""


@dataclass
class EpisodeData:
    index: int
    task: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, primary video key
    states: np.ndarray | None  # (T, S) float32
    actions: np.ndarray | None  # (T, A) float32
    timestamps: np.ndarray  # (T,) float32 seconds from the episode start
    fps: float


# --------------------------------------------------------------------------------------- reader


class LeRobotV3Dataset:
    """A LeRobot v3.0 dataset on disk. Metadata is read eagerly, frames on demand per episode."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"LeRobot dataset root {self.root} does not exist or is not a directory")
        self._info = _load_info(self.root)
        self._tasks = _load_tasks(self.root)
        self._episodes = _load_episodes(self.root, self._info)  # episode_index -> row (no stats)
        self._data_cache: dict[Path, pa.Table] = {}

    # -- metadata
    @property
    def info(self) -> dict[str, Any]:
        return self._info

    @property
    def fps(self) -> float:
        return float(self._info["fps"])

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        return int(sum(row["length"] for row in self._episodes))

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self._info["features"].items() if f.get("dtype") == "video"]

    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    def __len__(self) -> int:
        return self.num_episodes

    def episode_length(self, i: int) -> int:
        return int(self._episode_row(i)["length"])

    # -- episodes
    def episode(self, i: int, video_key: str | None = None) -> EpisodeData:
        """Episode `i` with frames of `video_key` (default: the first video key)."""
        row = self._episode_row(i)
        i = int(row["episode_index"])
        keys = self.video_keys
        if video_key is None:
            if not keys:
                raise DatasetError(f"{self.root} has no video features")
            video_key = keys[0]
        elif video_key not in keys:
            raise DatasetError(f"{self.root} has no video key {video_key!r}; it has {keys}")

        table = self._episode_rows(row)
        n = table.num_rows
        timestamps = table.column("timestamp").to_numpy().astype(np.float32)  # (T,)
        states = _column_2d(table, STATE_KEY)
        actions = _column_2d(table, ACTION_KEY)

        task = ""
        if "task_index" in table.column_names and n:
            task_index = int(table.column("task_index")[0].as_py())
            if not 0 <= task_index < len(self._tasks):
                raise DatasetError(f"{self.root}: episode {i} has unknown task_index {task_index}")
            task = self._tasks[task_index]
        elif row.get("tasks"):
            task = str(row["tasks"][0])

        video_path = self.root / self._info.get("video_path", VIDEO_PATH).format(
            video_key=video_key,
            chunk_index=int(row[f"videos/{video_key}/chunk_index"]),
            file_index=int(row[f"videos/{video_key}/file_index"]),
        )
        from_ts = float(row[f"videos/{video_key}/from_timestamp"])
        frames = read_frames_at(video_path, from_ts + timestamps.astype(np.float64))  # (T, H, W, 3)
        return EpisodeData(
            index=i, task=task, frames=frames, states=states, actions=actions,
            timestamps=timestamps, fps=self.fps,
        )

    def _episode_row(self, i: int) -> dict[str, Any]:
        try:
            i = operator.index(i)
        except TypeError:
            raise DatasetError(f"episode index must be an integer, got {i!r}") from None
        if not 0 <= i < len(self._episodes):
            raise DatasetError(
                f"episode {i} is out of range: {self.root} has {len(self._episodes)} episodes"
            )
        return self._episodes[i]

    def _episode_rows(self, row: dict[str, Any]) -> pa.Table:
        """The data-parquet rows of one episode, in frame order."""
        path = self.root / self._info.get("data_path", DATA_PATH).format(
            chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
        )
        table = self._data_cache.get(path)
        if table is None:
            if not path.is_file():
                raise DatasetError(f"{self.root}: data file {path} is missing")
            try:
                table = pq.read_table(path)
            except (pa.ArrowException, OSError) as exc:
                raise DatasetError(f"cannot read data file {path}: {exc}") from exc
            for name in ("episode_index", "frame_index", "timestamp"):
                if name not in table.column_names:
                    raise DatasetError(f"data file {path} has no {name!r} column")
            self._data_cache = {path: table}  # keep one file: episodes are read mostly in order
        episode_index = int(row["episode_index"])
        sub = table.filter(pc.equal(table.column("episode_index"), episode_index))
        sub = sub.sort_by("frame_index")
        if sub.num_rows != int(row["length"]) or sub.num_rows == 0:
            raise DatasetError(
                f"{path}: episode {episode_index} has {sub.num_rows} rows, "
                f"the episodes table says {row['length']}"
            )
        return sub


def _load_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DatasetError(f"{root} is not a LeRobot dataset: {path.relative_to(root)} is missing")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise DatasetError(f"{path} must hold a JSON object")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DatasetError(
            f"{root} is LeRobot dataset version {version!r}; only {CODEBASE_VERSION!r} is supported "
            "(convert older datasets with lerobot's convert_dataset_v21_to_v30 script)"
        )
    for key in ("fps", "features"):
        if key not in info:
            raise DatasetError(f"{path} has no {key!r}")
    if not isinstance(info["features"], dict):
        raise DatasetError(f"{path}: 'features' must be an object")
    return info


def _load_tasks(root: Path) -> list[str]:
    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        raise DatasetError(f"{root}: meta/tasks.parquet is missing")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if "task_index" not in table.column_names or "task" not in table.column_names:
        raise DatasetError(f"{path} needs 'task_index' and 'task' columns, has {table.column_names}")
    indices = table.column("task_index").to_pylist()
    names = table.column("task").to_pylist()
    tasks: list[str | None] = [None] * len(indices)
    for index, name in zip(indices, names, strict=True):
        if not isinstance(index, int) or not 0 <= index < len(indices) or tasks[index] is not None:
            raise DatasetError(f"{path}: task_index values must be 0..{len(indices) - 1}, each once")
        tasks[index] = str(name)
    return [t for t in tasks if t is not None]


def _load_episodes(root: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DatasetError(f"{root}: no episodes files under meta/episodes/")
    rows: list[dict[str, Any]] = []
    for path in files:
        try:
            names = pq.read_schema(path).names
            # the stats/* columns are large nested lists the reader does not need
            wanted = [n for n in names if not n.startswith("stats/")]
            rows.extend(pq.read_table(path, columns=wanted).to_pylist())
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"cannot read episodes file {path}: {exc}") from exc
    required = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    for key, feature in info["features"].items():
        if feature.get("dtype") == "video":
            required += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
    missing = [c for c in required if rows and c not in rows[0]]
    if missing:
        raise DatasetError(f"{root}: episodes table lacks columns {missing}")
    rows.sort(key=lambda r: r["episode_index"])
    if [r["episode_index"] for r in rows] != list(range(len(rows))):
        raise DatasetError(f"{root}: episode indices are not 0..{len(rows) - 1}")
    return rows


def _column_2d(table: pa.Table, name: str) -> np.ndarray | None:
    """A list-valued column as (T, D) float32, or None if the dataset has no such column."""
    if name not in table.column_names:
        return None
    column = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return flat.astype(np.float32).reshape(table.num_rows, -1)
    return column.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1)


# --------------------------------------------------------------------------------------- writer


class LeRobotV3Writer:
    """Write a LeRobot v3.0 dataset episode by episode.

    Everything goes into a hidden temporary directory next to `root` (videos are encoded as
    episodes arrive, so frames are not kept in memory); finalize() writes the metadata and
    renames the directory into place, so a crash never leaves something that looks complete.
    Usable as a context manager: finalizes on success, discards everything on an exception.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        fps: int,
        image_shape: tuple[int, int, int],
        state_dim: int = 8,
        action_dim: int = 7,
        robot_type: str = "franka",
        video_key: str = DEFAULT_VIDEO_KEY,
        extra_video_keys: Sequence[str] = (),
        *,
        overwrite: bool = False,
        state_names: Sequence[str] | None = None,
        action_names: Sequence[str] | None = None,
        codec: str | None = None,
    ) -> None:
        self.root = Path(root)
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or fps <= 0 or int(fps) != fps:
            raise ValueError(f"fps must be a positive integer, got {fps!r}")
        self.fps = int(fps)
        shape = tuple(int(d) for d in image_shape)
        if len(shape) != 3 or shape[2] != 3 or shape[0] <= 0 or shape[1] <= 0:
            raise ValueError(f"image_shape must be (H, W, 3), got {image_shape!r}")
        if shape[0] % 2 or shape[1] % 2:
            raise ValueError(f"image height and width must be even for yuv420p video, got {shape}")
        self.image_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        for name, dim in (("state_dim", state_dim), ("action_dim", action_dim)):
            if not isinstance(dim, int) or dim <= 0:
                raise ValueError(f"{name} must be a positive integer, got {dim!r}")
        self.state_dim, self.action_dim = state_dim, action_dim
        self.state_names = _names(state_names, state_dim, "s", "state_names")
        self.action_names = _names(action_names, action_dim, "a", "action_names")
        self.robot_type = robot_type
        self.video_keys = [video_key, *extra_video_keys]
        for key in self.video_keys:
            if not key or "/" in key or key in (STATE_KEY, ACTION_KEY, *AUTO_FEATURES):
                raise ValueError(f"invalid video key {key!r}")
        if len(set(self.video_keys)) != len(self.video_keys):
            raise ValueError(f"video keys must be distinct, got {self.video_keys}")
        self.overwrite = overwrite
        self.codec = codec or lerobot_codec()
        _check_target(self.root, overwrite)

        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root.parent / f".{self.root.name}.writing-{uuid.uuid4().hex[:8]}"
        self._tmp.mkdir()
        self._videos: dict[str, VideoWriter] = {}
        self._shapes: dict[str, tuple[int, ...]] = {video_key: self.image_shape}
        self._tasks: dict[str, int] = {}  # task -> task_index, in order of first appearance
        self._states: list[np.ndarray] = []  # per episode (T, S) float32
        self._actions: list[np.ndarray] = []  # per episode (T, A) float32
        self._episodes: list[dict[str, Any]] = []  # episodes-table rows without stats
        self._num_frames = 0
        self._image_hist: dict[str, list[np.ndarray]] = {k: [] for k in self.video_keys}  # (3, 256)
        self._state = "open"  # open | finalized | aborted | broken

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def add_episode(
        self,
        frames: np.ndarray,
        states: np.ndarray,
        actions: np.ndarray,
        task: str,
        extra_frames: dict[str, np.ndarray] | None = None,
    ) -> int:
        """Append one episode; returns its index. Inputs are fully validated before anything is written."""
        self._require_open()
        all_frames = self._validate_frames(frames, extra_frames)
        n = frames.shape[0]
        states = _validate_matrix(states, n, self.state_dim, "states")
        actions = _validate_matrix(actions, n, self.action_dim, "actions")
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task must be a non-empty string, got {task!r}")

        episode_index = len(self._episodes)
        row: dict[str, Any] = {
            "episode_index": episode_index,
            "tasks": [task],
            "length": n,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": self._num_frames,
            "dataset_to_index": self._num_frames + n,
        }
        try:
            for key, video in all_frames.items():
                writer = self._video_writer(key, video.shape[1:])
                start = writer.frames_written
                # An I-frame at each episode start keeps episodes independently decodable, as in
                # lerobot's files (which are separately encoded episodes joined by stream copy).
                writer.write(video, keyframe_first=True)
                row[f"videos/{key}/chunk_index"] = 0
                row[f"videos/{key}/file_index"] = 0
                row[f"videos/{key}/from_timestamp"] = start / self.fps
                row[f"videos/{key}/to_timestamp"] = (start + n) / self.fps
                self._image_hist[key].append(_channel_histograms(video))
        except BaseException:
            self._state = "broken"  # a video is partly written; only abort() makes sense now
            raise
        self._tasks.setdefault(task, len(self._tasks))
        self._states.append(states)
        self._actions.append(actions)
        self._episodes.append(row)
        self._num_frames += n
        return episode_index

    def finalize(self) -> Path:
        """Write all metadata and move the dataset into place at `root`. Returns `root`."""
        self._require_open()
        if not self._episodes:
            raise ValueError("no episodes were added; refusing to write an empty dataset")
        try:
            for writer in self._videos.values():
                writer.close()
            self._write_metadata()
            _check_target(self.root, self.overwrite)
            _move_into_place(self._tmp, self.root)
        except BaseException:
            self.abort()
            raise
        self._state = "finalized"
        return self.root

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._state == "finalized":
            return
        for writer in self._videos.values():
            writer.abort()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._state = "aborted"

    def __enter__(self) -> LeRobotV3Writer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None and self._state == "open":
                self.finalize()
        finally:
            if self._state != "finalized":
                self.abort()

    # -- helpers
    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"dataset writer for {self.root} is {self._state}")

    def _validate_frames(
        self, frames: np.ndarray, extra_frames: dict[str, np.ndarray] | None
    ) -> dict[str, np.ndarray]:
        check_frames(frames, "frames")
        if frames.shape[1:] != self.image_shape:
            h, w, c = self.image_shape
            raise ValueError(f"frames must be shaped (T, {h}, {w}, {c}), got {frames.shape}")
        extra = dict(extra_frames or {})
        expected = set(self.video_keys[1:])
        if set(extra) != expected:
            raise ValueError(
                f"extra_frames must have exactly the keys {sorted(expected)}, got {sorted(extra)}"
            )
        out = {self.video_keys[0]: frames}
        for key in self.video_keys[1:]:
            video = extra[key]
            check_frames(video, f"extra_frames[{key!r}]")
            if video.shape[0] != frames.shape[0]:
                raise ValueError(
                    f"extra_frames[{key!r}] has {video.shape[0]} frames, frames has {frames.shape[0]}"
                )
            shape = self._shapes.get(key)
            if shape is not None and video.shape[1:] != shape:
                raise ValueError(f"extra_frames[{key!r}] frames must be {shape}, got {video.shape[1:]}")
            if video.shape[1] % 2 or video.shape[2] % 2:
                raise ValueError(
                    f"extra_frames[{key!r}] height and width must be even, got {video.shape[1:3]}"
                )
            out[key] = video
        return out

    def _video_writer(self, key: str, shape: tuple[int, ...]) -> VideoWriter:
        writer = self._videos.get(key)
        if writer is None:
            self._shapes[key] = tuple(shape)
            path = self._tmp / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            writer = VideoWriter(path, width=shape[1], height=shape[0], fps=self.fps, codec=self.codec)
            self._videos[key] = writer
        return writer

    def _write_metadata(self) -> None:
        meta = self._tmp / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        data_path = self._tmp / DATA_PATH.format(chunk_index=0, file_index=0)
        data_path.parent.mkdir(parents=True, exist_ok=True)

        columns = self._data_columns()
        _write_parquet(_data_table(columns, self.state_dim, self.action_dim), data_path)

        features = [*self.video_keys, STATE_KEY, ACTION_KEY, *AUTO_FEATURES]
        episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        for e, row in enumerate(self._episodes):
            lo, hi = row["dataset_from_index"], row["dataset_to_index"]
            stats = {k: _histogram_stats(self._image_hist[k][e], row["length"]) for k in self.video_keys}
            stats.update({k: _array_stats(columns[k][lo:hi]) for k in features[len(self.video_keys):]})
            episode_stats.append(stats)
        _write_parquet(_episodes_table(self._episodes, episode_stats, features, self.video_keys),
                       self._tmp / EPISODES_PATH)

        dataset_stats = {k: _histogram_stats(np.sum(self._image_hist[k], axis=0), len(columns["index"]))
                         for k in self.video_keys}
        dataset_stats.update({k: _array_stats(columns[k]) for k in features[len(self.video_keys):]})
        _write_json(meta / "stats.json", {k: _stats_to_json(dataset_stats[k]) for k in features})

        tasks = sorted(self._tasks, key=self._tasks.__getitem__)
        _write_parquet(_tasks_table(tasks), meta / "tasks.parquet")
        _write_json(meta / "info.json", self._info(len(columns["index"]), len(tasks)))

    def _data_columns(self) -> dict[str, np.ndarray]:
        lengths = [row["length"] for row in self._episodes]
        frame_index = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
        task_of = [self._tasks[row["tasks"][0]] for row in self._episodes]
        return {
            STATE_KEY: np.concatenate(self._states),  # (N, S) float32
            ACTION_KEY: np.concatenate(self._actions),  # (N, A) float32
            # computed in float64 then stored as float32, like lerobot
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.repeat(np.arange(len(lengths), dtype=np.int64), lengths),
            "index": np.arange(len(frame_index), dtype=np.int64),
            "task_index": np.repeat(np.asarray(task_of, dtype=np.int64), lengths),
        }

    def _info(self, total_frames: int, total_tasks: int) -> dict[str, Any]:
        features: dict[str, Any] = {}
        options = encoder_options(self.codec)
        for key in self.video_keys:
            probe = probe_video(self._tmp / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0))
            height, width, channels = self._shapes[key]
            features[key] = {
                "dtype": "video",
                "shape": [height, width, channels],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": probe["video.height"],
                    "video.width": probe["video.width"],
                    "video.codec": probe["video.codec"],
                    "video.pix_fmt": probe["video.pix_fmt"],
                    "video.fps": self.fps,
                    "video.channels": channels,
                    "has_audio": False,
                    "video.g": _int_or_none(options.get("g")),
                    "video.crf": _int_or_none(options.get("crf")),
                    "video.preset": _int_or_none(options.get("preset")),
                    "video.fast_decode": 0,
                    "video.video_backend": "pyav",
                    "video.extra_options": {},
                    "is_depth_map": False,
                },
            }
        features[STATE_KEY] = {"dtype": "float32", "shape": [self.state_dim], "names": self.state_names}
        features[ACTION_KEY] = {"dtype": "float32", "shape": [self.action_dim], "names": self.action_names}
        for name, (dtype, _) in AUTO_FEATURES.items():
            features[name] = {"dtype": dtype, "shape": [1], "names": None}
        n = len(self._episodes)
        return {
            "codebase_version": CODEBASE_VERSION,
            "fps": self.fps,
            "features": features,
            "total_episodes": n,
            "total_frames": total_frames,
            "total_tasks": total_tasks,
            "chunks_size": 1000,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "robot_type": self.robot_type,
            "splits": {"train": f"0:{n}"},
        }


def _names(names: Sequence[str] | None, dim: int, prefix: str, what: str) -> list[str]:
    if names is None:
        return [f"{prefix}{i}" for i in range(dim)]
    names = [str(n) for n in names]
    if len(names) != dim:
        raise ValueError(f"{what} has {len(names)} entries, expected {dim}")
    return names


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def _validate_matrix(x: object, n: int, dim: int, what: str) -> np.ndarray:
    """(n, dim) finite float array -> float32 copy; ValueError with the problem otherwise."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must be a float array (float32), got dtype {x.dtype}")
    if x.shape != (n, dim):
        raise ValueError(f"{what} must be shaped ({n}, {dim}) to match {n} frames, got {x.shape}")
    out = x.astype(np.float32)
    if not np.all(np.isfinite(out)):
        bad = np.argwhere(~np.isfinite(out))[0]
        raise ValueError(f"{what} has a non-finite value (NaN/inf) at row {bad[0]}, column {bad[1]}")
    return out


def _check_target(root: Path, overwrite: bool) -> None:
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if not any(root.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{root} already exists and is not empty (pass overwrite=True to replace it)")
    if not (root / "meta" / "info.json").is_file():
        # overwrite replaces a dataset; it never deletes an arbitrary directory
        raise FileExistsError(f"{root} is not empty and not a LeRobot dataset; refusing to replace it")


def _move_into_place(tmp: Path, root: Path) -> None:
    """Rename `tmp` to `root`; an existing root is swapped out first and removed afterwards."""
    _fsync_tree(tmp)
    old: Path | None = None
    if root.exists():
        if any(root.iterdir()):
            old = root.parent / f".{root.name}.replaced-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
        else:
            root.rmdir()
    os.replace(tmp, root)
    fsync_dir(root.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------- statistics


def _channel_histograms(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (3, 256) int64 pixel-value counts per channel.

    Histograms give exact image statistics (min, max, mean, std, quantiles) and add up across
    episodes, so dataset-level stats are exact without keeping the frames.
    """
    return np.stack([np.bincount(frames[..., c].reshape(-1), minlength=256) for c in range(3)])


def _histogram_stats(hist: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """Per-channel stats in [0, 1], each shaped (3, 1, 1) like lerobot's; `count` is frames."""
    values = np.arange(256, dtype=np.float64) / 255.0
    out: dict[str, list[float]] = {k: [] for k in ("min", "max", "mean", "std", *QUANTILES)}
    for h in hist:  # (256,)
        n = h.sum()
        nonzero = np.flatnonzero(h)
        mean = float((h * values).sum() / n)
        out["min"].append(values[nonzero[0]])
        out["max"].append(values[nonzero[-1]])
        out["mean"].append(mean)
        out["std"].append(math.sqrt(max(float((h * (values - mean) ** 2).sum() / n), 0.0)))
        cdf = np.cumsum(h)
        for name, q in QUANTILES.items():
            # numpy's default ("linear") quantile, evaluated on the histogram
            pos = q * (n - 1)
            lo_rank, frac = int(math.floor(pos)), pos - math.floor(pos)
            lo = values[np.searchsorted(cdf, lo_rank, side="right")]
            hi = values[np.searchsorted(cdf, min(lo_rank + 1, n - 1), side="right")]
            out[name].append(lo + frac * (hi - lo))
    stats = {k: np.asarray(v, dtype=np.float64).reshape(3, 1, 1) for k, v in out.items()}
    stats["count"] = np.asarray([count], dtype=np.int64)
    return stats


def _array_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over rows of x (N,) or (N, D), each (D,) float64 (D = 1 for scalars)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    stats = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.asarray([len(x)], dtype=np.int64),
    }
    qs = np.quantile(x, list(QUANTILES.values()), axis=0)  # (5, D)
    stats.update({name: qs[i] for i, name in enumerate(QUANTILES)})
    return stats


STAT_ORDER = ("min", "max", "mean", "std", "count", *QUANTILES)


def _stats_to_json(stats: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: stats[k].tolist() for k in STAT_ORDER}


# ------------------------------------------------------------------------------ parquet tables


def _list_of(inner: pa.DataType) -> pa.DataType:
    # lerobot's files (written through `datasets`) name list children "element", not "item"
    return pa.list_(pa.field("element", inner))


def _fixed_list(values: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, type=pa.list_(pa.field("element", pa.float32()), dim))


def _data_table(columns: dict[str, np.ndarray], state_dim: int, action_dim: int) -> pa.Table:
    arrays = {
        STATE_KEY: _fixed_list(columns[STATE_KEY], state_dim),
        ACTION_KEY: _fixed_list(columns[ACTION_KEY], action_dim),
    }
    for name, (_, arrow_type) in AUTO_FEATURES.items():
        arrays[name] = pa.array(columns[name], type=arrow_type)
    # What `datasets` stores so that `datasets.Dataset.from_parquet` restores the features.
    float_value = {"dtype": "float32", "_type": "Value"}
    hf_features: dict[str, Any] = {
        STATE_KEY: {"feature": float_value, "length": state_dim, "_type": "List"},
        ACTION_KEY: {"feature": float_value, "length": action_dim, "_type": "List"},
    }
    for name, (dtype, _) in AUTO_FEATURES.items():
        hf_features[name] = {"dtype": dtype, "_type": "Value"}
    digest = hashlib.sha256()
    for name in (STATE_KEY, ACTION_KEY, "index"):
        digest.update(np.ascontiguousarray(columns[name]).tobytes())
    hf = {"info": {"features": hf_features}, "fingerprint": digest.hexdigest()[:16]}
    table = pa.table(arrays)
    return table.replace_schema_metadata({"huggingface": json.dumps(hf)})


def _episodes_table(
    rows: list[dict[str, Any]],
    stats: list[dict[str, dict[str, np.ndarray]]],
    features: list[str],
    video_keys: list[str],
) -> pa.Table:
    fields: list[pa.Field] = [
        pa.field("episode_index", pa.int64()),
        pa.field("tasks", _list_of(pa.string())),
        pa.field("length", pa.int64()),
        pa.field("data/chunk_index", pa.int64()),
        pa.field("data/file_index", pa.int64()),
        pa.field("dataset_from_index", pa.int64()),
        pa.field("dataset_to_index", pa.int64()),
    ]
    for key in video_keys:
        fields += [
            pa.field(f"videos/{key}/chunk_index", pa.int64()),
            pa.field(f"videos/{key}/file_index", pa.int64()),
            pa.field(f"videos/{key}/from_timestamp", pa.float64()),
            pa.field(f"videos/{key}/to_timestamp", pa.float64()),
        ]
    columns: dict[str, list[Any]] = {f.name: [row[f.name] for row in rows] for f in fields}
    image_type = _list_of(_list_of(_list_of(pa.float64())))  # (3, 1, 1)
    for feature in features:
        for stat in STAT_ORDER:
            if stat == "count":
                arrow_type = _list_of(pa.int64())
            else:
                arrow_type = image_type if feature in video_keys else _list_of(pa.float64())
            name = f"stats/{feature}/{stat}"
            fields.append(pa.field(name, arrow_type))
            columns[name] = [s[feature][stat].tolist() for s in stats]
    for name in ("meta/episodes/chunk_index", "meta/episodes/file_index"):
        fields.append(pa.field(name, pa.int64()))
        columns[name] = [0] * len(rows)
    schema = pa.schema(fields)
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in fields}, schema=schema)


def _tasks_table(tasks: list[str]) -> pa.Table:
    """task_index + task, with `task` recorded as the pandas index like lerobot's DataFrame dump.

    pandas is not needed: this is the schema metadata pandas.DataFrame.to_parquet would write.
    """
    table = pa.table({
        "task_index": pa.array(range(len(tasks)), type=pa.int64()),
        "task": pa.array(tasks, type=pa.string()),
    })
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{
            "name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
            "metadata": {"encoding": "UTF-8"},
        }],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.3.3",  # the version lerobot's fixture was written with
    }
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})


# ------------------------------------------------------------------------------------- files io


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=4, allow_nan=False), encoding="utf-8")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)
