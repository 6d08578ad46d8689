"""Episode recording: what the robot does under the console, as LeRobot v3 datasets for `lapa train finetune`.

While recording is on, every executed command (/lapa/step) becomes one frame of the episode: the
newest camera image at that moment (resized to the policy's input size, what the model sees), the
measured robot state the command was applied from, the executed action and the instruction. An
episode ends when recording is switched off or the instruction changes; each episode is written
as its own dataset directory `<out_dir>/episode_<UTC time>_<n>/` (`lapa train finetune --data
DIR [DIR ...]` takes several) by `LeRobotV3Writer` in a background thread, so a slow video
encode never delays the web server or a ROS callback.

The dataset writer (pyarrow + PyAV) is the only training-side code the robot side reaches; it
needs no torch (tests/test_layers.py checks both).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lapa.action import ACTION_NAMES, STATE_NAMES

MIN_FRAMES = 2  # shorter episodes are dropped (a click on and off)


def fit_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an RGB frame to (H, W) as the policy server does (cv2, INTER_AREA when shrinking)."""
    import cv2

    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image
    shrink = image.shape[0] > h or image.shape[1] > w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass
class Episode:
    instruction: str
    image_hw: tuple[int, int]
    started_s: float = field(default_factory=time.time)
    frames: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)


class EpisodeRecorder:
    """Toggle with `start()` / `stop()`; feed with `add_step()`; `status()` says what was written."""

    def __init__(self, out_dir: str | Path, fps: float = 10.0, image_hw: tuple[int, int] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.fps = fps
        self.image_hw = image_hw  # None: the camera's own size (rounded down to even sides)
        self._lock = threading.Lock()
        self._episode: Episode | None = None
        self.recording = False
        self.written: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self._count = 0

    def start(self) -> dict[str, Any]:
        with self._lock:
            self.recording = True
        return self.status()

    def stop(self) -> dict[str, Any]:
        with self._lock:
            self.recording = False
            episode, self._episode = self._episode, None
        if episode is not None:
            self._write_async(episode)
        return self.status()

    def add_step(self, frame: np.ndarray | None, state, action, instruction: str) -> bool:
        """One executed command; False when it was not recorded (off, no frame or no state)."""
        if not self.recording or frame is None or state is None or not instruction:
            return False
        hw = self.image_hw or (frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2)
        image = np.ascontiguousarray(fit_image(frame, hw), dtype=np.uint8)
        finished = None
        with self._lock:
            if not self.recording:
                return False
            if self._episode is not None and self._episode.instruction != instruction:
                finished, self._episode = self._episode, None
            if self._episode is None:
                self._episode = Episode(instruction, hw)
            ep = self._episode
            ep.frames.append(image)
            ep.states.append(np.asarray(state, np.float32))
            ep.actions.append(np.asarray(action, np.float32))
        if finished is not None:
            self._write_async(finished)
        return True

    def status(self) -> dict[str, Any]:
        with self._lock:
            current = self._episode
            return {"recording": self.recording, "out_dir": str(self.out_dir),
                    "frames": 0 if current is None else len(current.frames),
                    "instruction": None if current is None else current.instruction,
                    "written": list(self.written), "errors": list(self.errors),
                    "writing": sum(t.is_alive() for t in self._threads)}

    def wait(self, timeout_s: float = 60.0) -> None:
        """Until every episode handed to a writer thread is on disk (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ writing
    def _write_async(self, episode: Episode) -> None:
        if len(episode.frames) < MIN_FRAMES:
            return
        with self._lock:
            self._count += 1
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(episode.started_s))
            root = self.out_dir / f"episode_{stamp}_{self._count:03d}"
            previous = self._threads[-1] if self._threads else None
            t = threading.Thread(target=self._write, args=(episode, root, previous), name="lapa-console-record",
                                 daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _write(self, episode: Episode, root: Path, previous: threading.Thread | None) -> None:
        from lapa.data.lerobot_v3.writer import LeRobotV3Writer

        if previous is not None:
            previous.join()  # one encode at a time, episodes written in order

        fps = max(1, int(round(self.fps)))
        try:
            writer = LeRobotV3Writer(root, fps=fps, image_shape=(*episode.image_hw, 3),
                                     state_names=STATE_NAMES, action_names=ACTION_NAMES)
            with writer:
                writer.add_episode(np.stack(episode.frames), np.stack(episode.states), np.stack(episode.actions),
                                   episode.instruction)
        except Exception as e:  # noqa: BLE001 - reported on the page, the robot carries on
            with self._lock:
                self.errors.append(f"{root.name}: {type(e).__name__}: {e}")
            return
        with self._lock:
            self.written.append({"path": str(root), "frames": len(episode.frames), "fps": fps,
                                 "instruction": episode.instruction})
