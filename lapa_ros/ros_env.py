"""The ROS environment lapa's processes share: a private domain and localhost-only discovery."""

from __future__ import annotations

import os

DEFAULT_DOMAIN_ID = 42  # lapa's own domain unless ROS_DOMAIN_ID says otherwise (ROS's default is 0)


def ros_env(domain_id: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: os.environ) with ROS_DOMAIN_ID and ROS_AUTOMATIC_DISCOVERY_RANGE filled in.

    An explicit domain_id wins; otherwise an existing ROS_DOMAIN_ID is kept, else 42. Discovery
    stays on this machine (LOCALHOST) unless the environment already chose a range.
    """
    env = dict(os.environ if base is None else base)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    else:
        env.setdefault("ROS_DOMAIN_ID", str(DEFAULT_DOMAIN_ID))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", env["MUJOCO_GL"])
    return env


def apply_ros_env(domain_id: int | None = None) -> dict[str, str]:
    """Set the same variables in this process (before rclpy.init)."""
    env = ros_env(domain_id)
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "MUJOCO_GL", "PYOPENGL_PLATFORM"):
        os.environ[key] = env[key]
    return env


def private_domain_id(seed: int | None = None) -> int:
    """A domain in 1..100 from the process id: separate runs (tests, demos) do not hear each other."""
    return 1 + (os.getpid() if seed is None else seed) % 100
