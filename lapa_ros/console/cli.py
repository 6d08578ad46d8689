"""`lapa console`: the operator's web page for a running stack (`lapa bringup`, `ros2 launch ...`).

    lapa console                                   http://127.0.0.1:8080/
    lapa console --port 9000 --record-dir runs/rec
    LAPA_API_KEY=... lapa console --host 0.0.0.0   reachable from other machines: needs an API key

Runs the lapa_console node in this process, on ROS_DOMAIN_ID 42 unless set or --domain-id (as
`lapa bringup` and `lapa say`), with localhost-only discovery. Ctrl-C stops it; the robot is not
stopped by closing the console (use the page's stop or e-stop first).
"""

from __future__ import annotations

import argparse

from lapa.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("console", help="the operator's web page: watch, command and stop the robot",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    p.add_argument("--api-key", help="key for the page's API (default: $LAPA_API_KEY); needed off loopback")
    p.add_argument("--server-url", default="ws://127.0.0.1:8000", help="the policy server (default: %(default)s)")
    p.add_argument("--record-dir", default="recordings", help="where recorded episodes go (default: %(default)s)")
    p.add_argument("--confirm-before-motion", action="store_true",
                   help="the page asks for a confirmation (after the intent preview) before sending an instruction")
    p.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID or 42)")
    p.set_defaults(func=run)


def ros_arguments(args: argparse.Namespace) -> list[str]:
    from lapa_ros.console.node import NODE_NAME

    values = {"host": args.host, "port": args.port, "server_url": args.server_url, "record_dir": args.record_dir,
              "confirm_before_motion": args.confirm_before_motion}
    if args.api_key:
        values["api_key"] = args.api_key
    out = [NODE_NAME, "--ros-args"]
    for name, value in values.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if isinstance(value, str):
            text = '"' + text.replace('"', '\\"') + '"'  # a YAML string, even "8080"
        out += ["-p", f"{name}:={text}"]
    return out


def run(args: argparse.Namespace) -> int:
    from lapa_ros.ros_env import apply_ros_env
    from policy_server.security import InsecureBindError, check_bind, resolve_api_key

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port number")
    try:
        check_bind(args.host, resolve_api_key(args.api_key))
    except InsecureBindError as e:
        raise UserError(str(e)) from None
    apply_ros_env(args.domain_id)
    from lapa_ros.console.node import ConsoleNode
    from lapa_ros.ros_main import run_node

    return run_node(ConsoleNode, ros_arguments(args), threads=4)
