"""The ROS environment lapa's processes share: a private domain and discovery on this machine only.

On this machine only, in one of two ways. With Fast DDS (rmw_fastrtps, ROS's default middleware)
and no range chosen by the environment, lapa's processes load `config/fastdds_loopback_udp.xml`:
UDP on 127.0.0.1, no shared-memory transport. Under the fault benchmark the shared-memory transport
stopped delivering the scene camera to every reader, old and new, while lapa_sim kept publishing
(BENCHMARKS.md, "Fault injection on the whole stack"). rmw_fastrtps ignores a profile under
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (it installs shared memory + UDP itself), so the range is
SYSTEM_DEFAULT and the profile confines the traffic to loopback. An environment that chose a range
itself (the tests: LOCALHOST), or another middleware, keeps ROS's own LOCALHOST discovery.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DOMAIN_ID = 42  # lapa's own domain unless ROS_DOMAIN_ID says otherwise (ROS's default is 0)
DDS_PROFILE = Path(__file__).resolve().parents[1] / "config" / "fastdds_loopback_udp.xml"
FASTDDS_PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
_ENV_KEYS = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", FASTDDS_PROFILE_ENV, "MUJOCO_GL", "PYOPENGL_PLATFORM")


def ros_env(domain_id: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: os.environ) with ROS_DOMAIN_ID and the discovery settings filled in.

    An explicit domain_id wins; otherwise an existing ROS_DOMAIN_ID is kept, else 42. Discovery
    stays on this machine: the loopback UDP profile with Fast DDS (see above), else LOCALHOST,
    unless the environment already chose a range.
    """
    env = dict(os.environ if base is None else base)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    else:
        env.setdefault("ROS_DOMAIN_ID", str(DEFAULT_DOMAIN_ID))
    if "ROS_AUTOMATIC_DISCOVERY_RANGE" not in env:
        fastdds = env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") == "rmw_fastrtps_cpp"
        if fastdds and FASTDDS_PROFILE_ENV not in env and DDS_PROFILE.is_file():
            env[FASTDDS_PROFILE_ENV] = str(DDS_PROFILE)
            env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SYSTEM_DEFAULT"
        else:
            env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", env["MUJOCO_GL"])
    return env


def apply_ros_env(domain_id: int | None = None) -> dict[str, str]:
    """Set the same variables in this process (before rclpy.init)."""
    env = ros_env(domain_id)
    for key in _ENV_KEYS:
        if key in env:
            os.environ[key] = env[key]
    return env


def private_domain_id(seed: int | None = None) -> int:
    """A domain in 1..100 from the process id: separate runs (tests, demos) do not hear each other."""
    return 1 + (os.getpid() if seed is None else seed) % 100
