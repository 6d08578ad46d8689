"""The one small interface every robot backend offers the policy node."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from lapa.action import RobotState


class BackendError(Exception):
    """The robot reported an error (a failed motion, a lost connection); the loop stops on it."""


class RobotBackend(Protocol):
    """connect, state, apply action, stop, close (+ home and recover for the operator's services).

    `apply` must not block for longer than a few milliseconds: it starts the motion of one control
    period and returns. Errors of earlier asynchronous motions surface from `check()` (and may
    surface from `apply`) as BackendError.
    """

    name: str

    def connect(self) -> None: ...

    def state(self) -> RobotState: ...

    def state_age_s(self) -> float:
        """Seconds since `state()` was measured (the node holds the arm when it is too old)."""

    def apply(self, action: np.ndarray) -> None: ...

    def hold(self) -> None:
        """A tick without an action (the arm comes to rest by itself)."""

    def check(self) -> None: ...

    def stop(self) -> None:
        """Bring the arm to rest now, within its limits (never a jump)."""

    def home(self) -> None:
        """Blocking: move to the home pose with the gripper open."""

    def recover(self) -> None:
        """Clear a robot error after a fault so that motions are accepted again."""

    def close(self) -> None: ...
