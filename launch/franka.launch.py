"""`ros2 launch lapa_ros franka.launch.py [sim:=false robot_ip:=172.16.0.2] [model:=DIR] [speech:=true] ...`

The nodes and processes come from `lapa_ros.launch_plan.plan` (shared with `lapa bringup`, which
starts the same set where `ros2 launch` is not installed). Arguments: see LAUNCH_ARGUMENTS there,
or `ros2 launch lapa_ros franka.launch.py --show-args`.
"""

from launch.actions import DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from lapa_ros.launch_plan import LAUNCH_ARGUMENTS, plan
from launch import LaunchDescription


def _actions(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    the_plan = plan(values)
    actions = [LogInfo(msg=f"lapa: {note}") for note in the_plan.notes]
    actions += [ExecuteProcess(cmd=[p.executable, *p.arguments], name=p.name, output="screen")
                for p in the_plan.processes]
    actions += [Node(package=n.package, executable=n.executable, name=n.name, output="screen",
                     parameters=[*n.params_files, n.parameters])
                for n in the_plan.nodes]
    return actions


def generate_launch_description() -> LaunchDescription:
    arguments = [DeclareLaunchArgument(name, default_value=default, description=description)
                 for name, (default, description) in LAUNCH_ARGUMENTS.items()]
    return LaunchDescription([*arguments, OpaqueFunction(function=_actions)])
