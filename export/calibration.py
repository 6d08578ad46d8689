"""The observations the fp32 policy meets in closed loop, as policy.onnx feeds: the calibration set
of static int8 quantisation (export/quantize.py).

The exported fp32 policy itself drives the fast simulator (MuJoCo) through every task family of a
suite, executed as on the robot (temporal ensembling, the state history the node keeps), with the
camera rendered at the ROS camera's size and resized to the model's as the node does. Every
`every`-th model call's feeds are kept. Seeds start at CALIBRATION_SEED_BASE: disjoint from the
closed-loop evaluation's, the grounding probe's and the recordings' (small seeds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lapa.chunking import DEFAULT_ENSEMBLE_DECAY
from lapa.eval.closed_loop import EVAL_SEED_BASE, ClosedLoopExecutor, evaluate_policy

CALIBRATION_SEED_BASE = EVAL_SEED_BASE + 20_000_000
CAMERA_SIZE = 128  # the simulated ROS camera's side (lapa_ros/sim_node.py), resized to the model's


class FeedTap:
    """An ONNX Runtime session that keeps a copy of every `every`-th call's feeds."""

    def __init__(self, session: Any, every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.session, self.every = session, every
        self.calls = 0
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.calls += 1
        if self.calls % self.every == 0:
            self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.session.run(names, feeds)


def calibration_feeds(export_dir: str | os.PathLike, suite: str = "default", episodes: int = 2, every: int = 3,
                      threads: int | None = 1, progress: bool = True) -> tuple[list[dict[str, np.ndarray]], dict]:
    """-> (feeds of policy.onnx, what they are: suite, episodes, seeds, success of the rollouts)."""
    from export.ort_policy import OrtPolicy

    policy = OrtPolicy(Path(export_dir), threads=threads, providers=["CPUExecutionProvider"])
    tap = FeedTap(policy.session, every)
    policy.session = tap
    meta = policy.meta
    executor = ClosedLoopExecutor(policy, "ensemble", ensemble_decay=DEFAULT_ENSEMBLE_DECAY,
                                  image_size=meta.image_size[0],
                                  state_history=[int(t) for t in meta.raw.get("state_history", [])])
    result = evaluate_policy(executor, suite, episodes, render_size=CAMERA_SIZE, seed_base=CALIBRATION_SEED_BASE,
                             progress=progress, reset=executor.reset, wrist_camera=meta.has_wrist_camera)
    info = {"source": "closed-loop rollouts of the fp32 policy in the fast simulator (temporal ensembling)",
            "suite": suite, "episodes_per_task": episodes, "seed_base": CALIBRATION_SEED_BASE,
            "render_size": CAMERA_SIZE, "every_nth_call": every, "model_calls": tap.calls,
            "samples": len(tap.feeds), "rollout_success": result["success"]}
    return tap.feeds, info
