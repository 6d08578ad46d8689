"""The fast simulator (`lapa.sim.fast_driver.FastDriver`) in-process, for tests without franky-sim.

Physics and rendering run in one dedicated thread (MuJoCo's GL context belongs to the thread that
made it, and the node's executor may call from any of its threads): `apply` and `hold` hand the
tick's command over and return at once. Each command runs one control period of physics (faster
than real time), then the scene camera is rendered and handed to `on_image`, which the policy node
publishes on its image topic: the loop is closed through ROS exactly as with a real camera.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from lapa.action import GRIPPER_OPEN, RobotState, validate_action
from lapa.sim.scene import SceneConfig
from lapa_ros.backends.base import BackendError

logger = logging.getLogger(__name__)

ImageCallback = Callable[[np.ndarray, float], None]  # (uint8 (H, W, 3) RGB, wall-clock capture time in s)


class SimBackend:
    name = "sim"

    def __init__(self, control_hz: float, image_size: int = 64, seed: int = 0,
                 on_image: ImageCallback | None = None) -> None:
        self.control_hz = float(control_hz)
        self.image_size = image_size
        self.seed = seed
        self.on_image = on_image
        self._cv = threading.Condition()
        self._command: tuple[str, np.ndarray | None] | None = None  # newest wins
        self._state: RobotState | None = None
        self._error: BaseException | None = None
        self._closing = False
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_gripper = GRIPPER_OPEN
        self.steps = 0
        self.driver = None

    # ------------------------------------------------------------------ lifetime
    def connect(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-backend", daemon=True)
        self._thread.start()
        if not self._ready.wait(60.0):
            raise BackendError("the simulator did not start within 60 s")
        if self._error is not None:
            raise BackendError(f"the simulator failed to start: {self._error}") from self._error

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None

    def _run(self) -> None:
        from lapa.sim.fast_driver import FastDriver

        try:
            self.driver = FastDriver(SceneConfig(image_size=self.image_size), control_hz=self.control_hz)
            self.driver.reset(self.seed)
            self._after_step()
        except BaseException as e:  # noqa: BLE001 - reported by connect()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                with self._cv:
                    while self._command is None and not self._closing:
                        self._cv.wait()
                    if self._closing:
                        return
                    kind, payload = self._command
                    self._command = None
                try:
                    if kind == "action":
                        self.driver.apply_action(payload)
                        self._last_gripper = float(payload[6])
                    elif kind == "hold":
                        self.driver.apply_action([0, 0, 0, 0, 0, 0, self._last_gripper])
                    elif kind == "home":
                        self.driver.reset(int(payload))
                        self._last_gripper = GRIPPER_OPEN
                    self.steps += 1
                    self._after_step()
                except BaseException as e:  # noqa: BLE001 - surfaces through check()
                    self._error = e
                    logger.error("simulator step failed: %s", e)
        finally:
            self.driver.close()

    def _after_step(self) -> None:
        self._state = self.driver.robot_state()
        if self.on_image is not None:
            image = self.driver.render("scene")
            self.on_image(image, time.time())

    def _post(self, kind: str, payload=None) -> None:
        if self._thread is None:
            raise BackendError("the simulator is not running")
        with self._cv:
            self._command = (kind, payload)
            self._cv.notify_all()

    # ------------------------------------------------------------------ interface
    def state(self) -> RobotState:
        if self._state is None:
            raise BackendError("the simulator is not running")
        return self._state

    def state_age_s(self) -> float:
        return 0.0  # the simulator's state after its last step is the current one by definition

    def check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise BackendError(f"simulator error: {error}")

    def apply(self, action) -> None:
        self._post("action", validate_action(action))

    def hold(self) -> None:
        self._post("hold")

    def stop(self) -> None:
        """A FastDriver step ends at rest (its servo ramp is over at 60% of the period): just hold."""
        self._post("hold")

    def recover(self) -> None:
        self._error = None

    def home(self) -> None:
        steps = self.steps
        self._post("home", self.seed)
        deadline = time.monotonic() + 30.0
        while self.steps == steps:
            if time.monotonic() > deadline:
                raise BackendError("the simulator did not reset within 30 s")
            time.sleep(0.005)
