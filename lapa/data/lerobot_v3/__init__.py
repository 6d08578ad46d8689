"""Read and write LeRobot v3.0 datasets with pyarrow + PyAV (lerobot itself needs Python >= 3.12).

The layout mirrors what lerobot 0.6.1 writes (docs/lerobot_v3.md):

    meta/info.json  meta/stats.json  meta/tasks.parquet
    meta/episodes/chunk-000/file-000.parquet     one row per episode (+ per-episode stats)
    data/chunk-000/file-000.parquet              one row per frame, all episodes
    videos/<video_key>/chunk-000/file-000.mp4    all episodes back to back

Episode k's video starts at `from_timestamp` (where episode k-1 ended); frame i of the episode is
the video frame at from_timestamp + timestamp[i], matched within 1e-4 s like lerobot does.
The writer keeps everything in one chunk/file; the reader follows whatever indices the
episodes table names.
"""

from lapa.data.lerobot_v3.layout import (
    ACTION_KEY,
    CODEBASE_VERSION,
    DEFAULT_VIDEO_KEY,
    STATE_KEY,
    DatasetError,
    EpisodeData,
    lerobot_codec,
)
from lapa.data.lerobot_v3.reader import LeRobotV3Dataset
from lapa.data.lerobot_v3.writer import LeRobotV3Writer

__all__ = ["ACTION_KEY", "CODEBASE_VERSION", "DEFAULT_VIDEO_KEY", "STATE_KEY", "DatasetError", "EpisodeData",
           "LeRobotV3Dataset", "LeRobotV3Writer", "lerobot_codec"]
