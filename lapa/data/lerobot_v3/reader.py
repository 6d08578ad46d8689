"""`LeRobotV3Dataset`: episodes of a LeRobot v3.0 dataset (frames, states, actions, task)."""

from __future__ import annotations

import json
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lapa.data.lerobot_v3.layout import (
    ACTION_KEY,
    CODEBASE_VERSION,
    DATA_PATH,
    STATE_KEY,
    VIDEO_PATH,
    DatasetError,
    EpisodeData,
)
from lapa.data.video_io import read_frames_at


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
        labels = self.episode_labels(i)
        row = self._episode_row(i)
        keys = self.video_keys
        if video_key is None:
            if not keys:
                raise DatasetError(f"{self.root} has no video features")
            video_key = keys[0]
        elif video_key not in keys:
            raise DatasetError(f"{self.root} has no video key {video_key!r}; it has {keys}")

        video_path = self.root / self._info.get("video_path", VIDEO_PATH).format(
            video_key=video_key,
            chunk_index=int(row[f"videos/{video_key}/chunk_index"]),
            file_index=int(row[f"videos/{video_key}/file_index"]),
        )
        from_ts = float(row[f"videos/{video_key}/from_timestamp"])
        labels.frames = read_frames_at(video_path, from_ts + labels.timestamps.astype(np.float64))  # (T, H, W, 3)
        return labels

    def episode_labels(self, i: int) -> EpisodeData:
        """Episode `i` without its video (`frames` empty): task, states, actions, timestamps from the parquet
        files only. Streaming training sets keep these (a few floats a frame) and decode frames on demand."""
        row = self._episode_row(i)
        i = int(row["episode_index"])
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
        return EpisodeData(
            index=i, task=task, frames=np.zeros((0, 0, 0, 3), np.uint8), states=states, actions=actions,
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
