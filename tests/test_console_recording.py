"""An episode the console recorded is training data: `lapa train finetune` reads it and trains."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lapa.cli import main
from lapa_ros.console.recorder import EpisodeRecorder

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_lapa_train_finetune_reads_a_recorded_episode(tmp_path, torch_one_thread):
    rec = EpisodeRecorder(tmp_path / "rec", fps=10, image_hw=(64, 64))
    rng = np.random.default_rng(0)
    rec.start()
    for i in range(12):
        frame = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)  # resized to the policy's 64x64
        rec.add_step(frame, [0.5 + 0.01 * i, 0, 0.2, 3.14, 0, 0, 0.04, 0.04], [0.01, 0, 0, 0, 0, 0, 1],
                     "reach the red block")
    rec.stop()
    rec.wait(60)
    written = rec.status()["written"]
    assert len(written) == 1 and written[0]["frames"] == 12
    code = main(["train", "finetune", "--init", "scratch", "--data", written[0]["path"], "--out", str(tmp_path / "run"),
                 "--steps", "2", "--batch-size", "4", "--threads", "1", "--ckpt-every", "2", "--log-every", "1"])
    assert code == 0
    assert (tmp_path / "run" / "checkpoints").is_dir()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and np.isfinite(metrics[-1]["loss"])
