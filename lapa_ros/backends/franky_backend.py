"""A Franka through `franky`: a real FR3/Panda at `robot_ip`, or franky-sim on a 127.x address.

Motion type: each 7-D delta becomes one asynchronous `CartesianVelocityMotion` (twist = delta /
period, held for one period, ramped down unless the next action preempts it); `lapa.franka` has
the measurements in franky-sim that chose it: relative `CartesianMotion`s stop and go at every step
(about 1000 m/s3 of jerk while cruising at 10 Hz, speed ripple 0.4-0.7), velocity motions cruise
smoothly (14 m/s3, no ripple), and applying each delta from where the arm is never winds up in
closed loop. The connection and the stop come from there too (`connect_franky` with its timeout,
`halt`'s jerk-limited `CartesianVelocityStopMotion`).

Panda (FER) users: `franky-control` from PyPI bundles libfranka 0.21, which talks only to the
Franka Research 3. A Panda needs a franky build against libfranka 0.9.2 (< 0.10), published with
each franky release (same Python API); install that wheel instead of `franky-control` and nothing
here changes. A real robot also needs a PREEMPT_RT kernel (`realtime_config` is set to Ignore here
so that franky-sim runs on ordinary machines: on a real robot pass `realtime=True`).

Threads: `apply`, `stop`, `check` are called from the node's control thread only; `state()` may be
called from any thread (it reads franky's last robot state).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from lapa.action import RobotState, gripper_is_open, validate_action
from lapa.franka import (
    HOME_GRIPPER_WIDTH_M,
    command_gripper,
    connect_franky,
    franky_errors,
    halt,
    home_motion,
    velocity_motion,
)
from lapa.geometry import matrix_to_rpy
from lapa_ros.backends.base import BackendError

logger = logging.getLogger(__name__)

_ABANDONED: list = []  # unfinished gripper futures of a lost connection, kept alive
HOME_TIMEOUT_S = 60.0  # franky-sim on a loaded machine runs at 0.2-0.9x real time
STATE_POLL_S = 0.004  # the robot state is read at most this often (the control thread reads the newest)
GRIPPER_POLL_S = 0.05  # the gripper width is read at this period (by the state thread)


def _errors() -> tuple[type[BaseException], ...]:
    """What franky raises: its own exceptions, and RuntimeError for errors of its motion planner
    (e.g. "Motion planner failed with error code -110") and of lost connections ("Net Exception")."""
    return (*franky_errors(), RuntimeError)


def _is_network(error: BaseException) -> bool:
    import franky

    return isinstance(error, franky.NetworkException) or "Net Exception" in str(error)


class FrankyBackend:
    name = "franky"

    def __init__(self, robot_ip: str, control_hz: float, connect_timeout_s: float = 10.0,
                 relative_dynamics_factor: float = 0.5, realtime: bool = False) -> None:
        if not 0 < control_hz <= 1000:
            raise ValueError(f"control_hz must be in (0, 1000], got {control_hz}")
        self.robot_ip = robot_ip
        self.period_s = 1.0 / control_hz
        self.connect_timeout_s = connect_timeout_s
        self.relative_dynamics_factor = relative_dynamics_factor
        self.realtime = realtime
        self.robot = None
        self.gripper = None
        self._gripper_future = None
        self._gripper_open: bool | None = None  # last command sent
        self._gripper_wanted = True
        self._width_m = HOME_GRIPPER_WIDTH_M
        self._state: tuple[RobotState, float] | None = None  # (state, monotonic time read)
        self.broken: str | None = None  # a lost connection: recover() reconnects
        self._poll_stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------------ lifetime
    def connect(self) -> None:
        if self.realtime:
            raise NotImplementedError("realtime=True: construct franky.Robot with RealtimeConfig.Enforce "
                                      "on a PREEMPT_RT machine (connect_franky ignores the RT check)")
        try:
            self.robot, self.gripper = connect_franky(self.robot_ip, self.connect_timeout_s,
                                                      self.relative_dynamics_factor)
        except (TimeoutError, ConnectionError) as e:
            raise BackendError(str(e)) from e
        self._width_m = float(self.gripper.width)
        self._gripper_open = bool(self._width_m > HOME_GRIPPER_WIDTH_M / 2)
        self._gripper_wanted = self._gripper_open
        self._poll_stop.clear()
        self._poller = threading.Thread(target=self._poll_state, name="franky-state", daemon=True)
        self._poller.start()
        deadline = time.monotonic() + self.connect_timeout_s
        while self._state is None:
            if time.monotonic() > deadline:
                raise BackendError(f"connected to {self.robot_ip} but no robot state arrived")
            time.sleep(0.01)

    def close(self) -> None:
        self._disconnect(stop_robot=not self.broken)

    def _disconnect(self, stop_robot: bool) -> None:
        self._poll_stop.set()
        if self._poller is not None:
            self._poller.join(2.0)
            self._poller = None
        robot, self.robot = self.robot, None
        if robot is not None and stop_robot:  # (a parameter named `halt` once hid the function: no stop on close)
            try:
                halt(robot)
            except Exception as e:  # noqa: BLE001 - closing anyway
                logger.warning("stopping the robot on close: %s", e)
        future, self._gripper_future = self._gripper_future, None
        if future is not None and not future.wait(5.0):
            _ABANDONED.append(future)  # destroying an unfinished franky future blocks until it ends
        self.gripper = None
        self._state = None
        del robot  # disconnects

    def _poll_state(self) -> None:
        """Read the robot state continuously: a read waits for libfranka's next state packet (about
        1 ms on a robot, 5-50 ms from a loaded franky-sim), which the control tick must not wait for."""
        last_width = 0.0
        while not self._poll_stop.is_set():
            robot, gripper = self.robot, self.gripper
            if robot is None:
                return
            try:
                pose = np.asarray(robot.current_cartesian_state.pose.end_effector_pose.matrix)
                now = time.monotonic()
                if gripper is not None and now - last_width >= GRIPPER_POLL_S:
                    self._width_m = float(gripper.width)
                    last_width = now
                self._state = (RobotState(pose[:3, 3].copy(), matrix_to_rpy(pose[:3, :3]), self._width_m), now)
            except Exception as e:  # noqa: BLE001 - state() reports staleness; retried
                logger.debug("reading the robot state: %s", e)
                if _is_network(e) and not self.broken:
                    self.broken = f"{type(e).__name__}: {e}"  # the next check() faults, not a stale-state hold
                self._poll_stop.wait(0.01)
                continue
            self._poll_stop.wait(STATE_POLL_S)  # not every 1 kHz packet: leave the GIL to the control thread

    # ------------------------------------------------------------------ state
    def _robot(self):
        if self.robot is None:
            raise BackendError("not connected to the robot")
        return self.robot

    def state(self) -> RobotState:
        """The newest measured state, read by a helper thread (see `state_age_s`)."""
        self._robot()
        if self._state is None:
            raise BackendError("no robot state received yet")
        return self._state[0]

    def state_age_s(self) -> float:
        return float("inf") if self._state is None else time.monotonic() - self._state[1]

    def _failed(self, what: str, error: BaseException) -> BackendError:
        if _is_network(error):
            self.broken = f"{type(error).__name__}: {error}"
        return BackendError(f"franky {what} failed: {type(error).__name__}: {error}")

    def check(self) -> None:
        """Raise the error the last asynchronous motion or gripper command ended with, if any."""
        robot = self._robot()
        if self.broken:
            raise BackendError(f"the robot connection is lost ({self.broken}); /lapa/start reconnects")
        try:
            robot.poll_motion()  # re-raises what join_motion() would
        except _errors() as e:
            raise self._failed("motion", e) from e
        self._service_gripper()

    # ------------------------------------------------------------------ motion
    def apply(self, action) -> None:
        a = validate_action(action)
        robot = self._robot()
        motion = velocity_motion(a, self.period_s)
        try:
            robot.move(motion, asynchronous=True)  # preempts the previous step's motion seamlessly
        except _errors() as e:
            raise self._failed("velocity motion", e) from e
        self._gripper_wanted = bool(gripper_is_open(a[6]))
        self._service_gripper()

    def hold(self) -> None:
        self._service_gripper()

    def stop(self) -> None:
        """Preempt the running velocity motion with franky's jerk-limited stop; returns at once.

        (Waiting for the arm to come to rest would hold the control thread for ~0.2 s; the stop's
        outcome surfaces through check() like any motion's.)
        """
        import franky

        robot = self._robot()
        try:
            if robot.is_in_control:
                robot.move(franky.CartesianVelocityStopMotion(), asynchronous=True)
        except _errors():
            try:
                robot.stop()  # not a velocity motion running: libfranka's own stop
            except _errors() as e:
                raise self._failed("stop", e) from e

    def recover(self) -> None:
        """Clear robot errors; after a lost connection, connect again (within connect_timeout_s)."""
        if self.broken:
            logger.warning("reconnecting to %s after: %s", self.robot_ip, self.broken)
            self._disconnect(stop_robot=False)
            self.broken = None
            self.connect()
            # The lost connection's motion may still be registered on the robot side ("Attempted to
            # start multiple motions"): libfranka's stop command ends it.
            try:
                self.robot.stop()
                if self.robot.has_errors:
                    self.robot.recover_from_errors()
            except _errors() as e:
                logger.info("stop after reconnecting: %s", e)
            return
        robot = self._robot()
        try:
            halt(robot)
        except _errors() as e:
            logger.info("motion ended with: %s", e)
        try:
            if robot.has_errors:
                robot.recover_from_errors()
        except _errors() as e:
            raise self._failed("error recovery", e) from e

    def home(self) -> None:

        robot = self._robot()
        self.recover()
        self._gripper_wanted = True
        deadline = time.monotonic() + HOME_TIMEOUT_S
        while self._gripper_future is not None or not self._gripper_open:
            self._service_gripper()
            if time.monotonic() > deadline:
                raise BackendError("the gripper did not open in time")
            time.sleep(0.02)
        try:
            robot.move(home_motion(), asynchronous=True)
            # join_motion() in short slices: it returns True once the motion has finished (raising its
            # error if any); is_in_control alone can read False before the control loop has taken the
            # new motion. A long join would hold the GIL for the whole motion.
            while not robot.join_motion(0.002):
                if time.monotonic() > deadline:
                    halt(robot)
                    raise BackendError(f"the move home did not finish within {HOME_TIMEOUT_S:g} s")
                time.sleep(0.01)
        except _errors() as e:
            raise self._failed("move home", e) from e

    def _service_gripper(self) -> None:
        """Send the wanted open/closed command once the previous one has finished (never two at once)."""
        if self.gripper is None:
            return
        if self._gripper_future is not None:
            if not self._gripper_future.wait(0):
                return
            future, self._gripper_future = self._gripper_future, None
            try:
                future.get()
            except _errors() as e:
                raise self._failed("gripper command", e) from e
        if self._gripper_wanted == self._gripper_open:
            return
        self._gripper_future = command_gripper(self.gripper, self._gripper_wanted)
        self._gripper_open = self._gripper_wanted
