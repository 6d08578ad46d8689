"""ROS 2 parameters of a lapa node: declared with their descriptions (so `ros2 param describe`
explains them), read back once at start."""

from __future__ import annotations

from typing import Any


def declare_parameters(node: Any, specs: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Declare `specs` (name -> (default, description)) on an rclpy node; -> {name: value}."""
    from rcl_interfaces.msg import ParameterDescriptor

    for name, (default, description) in specs.items():
        node.declare_parameter(name, default, ParameterDescriptor(description=description))
    return {name: node.get_parameter(name).value for name in specs}
