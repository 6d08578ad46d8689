"""`LeRobotV3Writer`: episodes into a new LeRobot v3.0 dataset, made visible atomically when complete."""

from __future__ import annotations

import json
import numbers
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lapa.data.lerobot_v3.layout import (
    ACTION_KEY,
    AUTO_FEATURES,
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_VIDEO_KEY,
    EPISODES_PATH,
    STATE_KEY,
    VIDEO_PATH,
    lerobot_codec,
)
from lapa.data.lerobot_v3.stats import array_stats, channel_histograms, histogram_stats, stats_to_json
from lapa.data.lerobot_v3.tables import data_table, episodes_table, tasks_table
from lapa.data.video_io import (
    VideoWriter,
    check_frames,
    encoder_options,
    fsync_dir,
    fsync_file,
    probe_video,
)


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
                self._image_hist[key].append(channel_histograms(video))
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
        _write_parquet(data_table(columns, self.state_dim, self.action_dim), data_path)

        features = [*self.video_keys, STATE_KEY, ACTION_KEY, *AUTO_FEATURES]
        episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        for e, row in enumerate(self._episodes):
            lo, hi = row["dataset_from_index"], row["dataset_to_index"]
            stats = {k: histogram_stats(self._image_hist[k][e], row["length"]) for k in self.video_keys}
            stats.update({k: array_stats(columns[k][lo:hi]) for k in features[len(self.video_keys):]})
            episode_stats.append(stats)
        _write_parquet(episodes_table(self._episodes, episode_stats, features, self.video_keys),
                       self._tmp / EPISODES_PATH)

        dataset_stats = {k: histogram_stats(np.sum(self._image_hist[k], axis=0), len(columns["index"]))
                         for k in self.video_keys}
        dataset_stats.update({k: array_stats(columns[k]) for k in features[len(self.video_keys):]})
        _write_json(meta / "stats.json", {k: stats_to_json(dataset_stats[k]) for k in features})

        tasks = sorted(self._tasks, key=self._tasks.__getitem__)
        _write_parquet(tasks_table(tasks), meta / "tasks.parquet")
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
