"""Robot backends of the policy node: `franky` (a Franka, or franky-sim, through franky) and `sim`
(the in-process fast simulator, which also publishes its camera so the loop is closed)."""

from lapa_ros.backends.base import BackendError, RobotBackend

BACKENDS = ("franky", "sim")

__all__ = ["BACKENDS", "BackendError", "RobotBackend"]
