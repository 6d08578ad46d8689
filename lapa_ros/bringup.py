"""`lapa bringup [name:=value ...]`: what `ros2 launch lapa_ros franka.launch.py` starts, without `ros2`.

Takes the same arguments (`sim:=false robot_ip:=172.16.0.2`, see `--show-args`), asks the same
`launch_plan.plan()`, and starts each node as `python -m <module> --ros-args -r __node:=<name>
--params-file <generated yaml>` and each process (the policy server) as `python -m <module>`, all
with the ROS environment of lapa_ros.ros_env (ROS_DOMAIN_ID 42 unless set or --domain-id,
localhost-only discovery). Ctrl-C (or SIGTERM) stops them all: SIGINT, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lapa.errors import UserError
from lapa_ros.launch_plan import LAUNCH_ARGUMENTS, LaunchPlan, LaunchPlanError, NodeSpec, ProcessSpec, plan
from lapa_ros.ros_env import ros_env


def node_command(spec: NodeSpec, params_file: Path) -> list[str]:
    cmd = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}"]
    for extra in spec.params_files:
        cmd += ["--params-file", extra]
    return cmd + ["--params-file", str(params_file)]


def process_command(spec: ProcessSpec) -> list[str]:
    return [sys.executable, "-m", spec.module, *spec.arguments]


def write_params(spec: NodeSpec, directory: Path) -> Path:
    """ROS 2 parameter YAML ({node: {ros__parameters: {...}}}); JSON is valid YAML and quotes strings."""
    path = directory / f"{spec.name}.params.yaml"
    path.write_text(json.dumps({spec.name: {"ros__parameters": spec.parameters}}, indent=2) + "\n")
    return path


class Bringup:
    """Starts a LaunchPlan's processes and nodes; `stop()` ends every one of them."""

    def __init__(self, the_plan: LaunchPlan, env: dict[str, str] | None = None, log_dir: Path | None = None,
                 cwd: Path | None = None) -> None:
        self.plan = the_plan
        self.env = env if env is not None else ros_env()
        self.log_dir = log_dir
        self.cwd = cwd
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list = []
        self._tmp = tempfile.TemporaryDirectory(prefix="lapa-bringup-")

    def commands(self) -> list[tuple[str, list[str]]]:
        params_dir = Path(self._tmp.name)
        out = [(p.name, process_command(p)) for p in self.plan.processes]
        out += [(n.name, node_command(n, write_params(n, params_dir))) for n in self.plan.nodes]
        return out

    def start(self) -> Bringup:
        try:
            for name, cmd in self.commands():
                self.start_one(name, cmd)
        except BaseException:
            self.stop()
            raise
        return self

    def start_one(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        stdout = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            stdout = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(stdout)
        # Own session: a Ctrl-C in the terminal reaches bringup, which stops the children in order.
        proc = subprocess.Popen(cmd, env={**self.env, **(env or {})}, cwd=self.cwd, stdout=stdout,
                                stderr=subprocess.STDOUT if stdout else None, start_new_session=True)
        self.procs[name] = proc
        return proc

    def dead(self) -> dict[str, int]:
        """Children that have exited: name -> return code."""
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def log_tail(self, name: str, chars: int = 3000) -> str:
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, timeout_s: float = 10.0) -> dict[str, int]:
        """Nodes first, then the server: SIGINT to nodes and SIGTERM to other processes (each one's
        graceful shutdown), then SIGTERM, then SIGKILL; return codes."""
        order = list(reversed(self.procs.items()))
        processes = {p.name for p in self.plan.processes}
        for step, wait_s in ((0, timeout_s), (1, 5.0), (2, 5.0)):
            alive = [(n, p) for n, p in order if p.poll() is None]
            if not alive:
                break
            for name, p in alive:
                sig = (signal.SIGTERM if name in processes else signal.SIGINT, signal.SIGTERM, signal.SIGKILL)[step]
                try:
                    os.killpg(p.pid, sig)  # the child and anything it started
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            for _, p in alive:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for f in self._logs:
            f.close()
        self._logs.clear()
        self._tmp.cleanup()
        return {n: p.returncode for n, p in self.procs.items()}

    def __enter__(self) -> Bringup:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_launch_arguments(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise UserError(f"launch arguments look like name:=value, got {item!r}")
        out[name] = value
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bringup", help="start what franka.launch.py starts (no ros2 needed); Ctrl-C stops all",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arguments", nargs="*", metavar="name:=value", help="launch arguments (see --show-args)")
    p.add_argument("--show-args", action="store_true", help="list the launch arguments and exit")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands, start nothing")
    p.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID for every process (default: $ROS_DOMAIN_ID or 42)")
    p.add_argument("--log-dir", type=Path, help="write each process's output to DIR/<name>.log instead of here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.show_args:
        for name, (default, description) in LAUNCH_ARGUMENTS.items():
            print(f"  {name}:={default!r:<24} {description}")
        return 0
    try:
        the_plan = plan(parse_launch_arguments(args.arguments))
    except LaunchPlanError as e:
        raise UserError(str(e)) from e
    env = ros_env(args.domain_id)
    bringup = Bringup(the_plan, env, args.log_dir)
    print(the_plan.describe())
    print(f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} ROS_AUTOMATIC_DISCOVERY_RANGE={env['ROS_AUTOMATIC_DISCOVERY_RANGE']}")
    if args.dry_run:
        for name, cmd in bringup.commands():
            print(f"{name}: {' '.join(cmd)}")
        bringup.stop()
        return 0
    stop = {"signal": None}

    def on_signal(signum, _frame) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bringup.start()
    print(f"started {len(bringup.procs)} processes; Ctrl-C stops them. Give an instruction with: "
          f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} lapa say \"pick up the red block\"")
    code = 0
    try:
        while stop["signal"] is None:
            dead = bringup.dead()
            if dead:
                for name, rc in dead.items():
                    print(f"lapa bringup: {name} exited with {rc}; stopping everything", file=sys.stderr)
                code = 1
                break
            time.sleep(0.2)
    finally:
        codes = bringup.stop()
        print("stopped: " + ", ".join(f"{n} ({rc})" for n, rc in codes.items()))
    return code
