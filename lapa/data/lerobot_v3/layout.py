"""The LeRobot v3.0 layout: file paths, feature keys, the video codec, the errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lapa.data.video_io import default_codec, encoder_available
from lapa.errors import UserError

CODEBASE_VERSION = "v3.0"
DEFAULT_VIDEO_KEY = "observation.images.scene"
WRIST_VIDEO_KEY = "observation.images.wrist"  # the hand camera, where a dataset has one
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
