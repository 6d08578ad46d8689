"""`lapa say` (one instruction, and the console) and `Bringup` starting and stopping real processes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest
from ros_helpers import REPO_ROOT, RosProbe, wait_for

pytest.importorskip("rclpy")

pytestmark = [pytest.mark.timeout(120)]


def test_lapa_say_publishes_the_instruction(tmp_path):
    from std_msgs.msg import String

    probe = RosProbe("say_probe")
    try:
        heard = probe.record(String, "/lapa/instruction", convert=lambda m: m.data)
        domain = os.environ["ROS_DOMAIN_ID"]
        out = subprocess.run([sys.executable, "-m", "lapa.cli", "say", "--domain-id", domain, "--wait", "20",
                              "pick", "up", "the", "red", "block"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=90)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "sent 'pick up the red block' on /lapa/instruction" in out.stdout
        wait_for(lambda: heard, 10, "the instruction")
        assert heard[-1][1] == "pick up the red block"
    finally:
        probe.close()


def test_lapa_say_without_text_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "lapa.cli", "say"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "say what?" in out.stderr


def test_console_sends_lines_and_calls_services():
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from lapa_ros.say import Speaker, console

    probe = RosProbe("console_probe")
    calls: list[str] = []

    def on_stop(_req, resp):
        calls.append("stop")
        resp.success, resp.message = True, "stopped"
        return resp

    probe.node.create_service(Trigger, "/lapa/stop", on_stop)
    heard = probe.record(String, "/lapa/instruction", convert=lambda m: m.data)
    speaker = Speaker()
    try:
        stdout = io.StringIO()
        code = console(speaker, io.StringIO("push the blue block left\nstop\n\nstatus\nquit\n"), stdout)
        assert code == 0
        wait_for(lambda: heard, 10, "the instruction")
        assert heard[-1][1] == "push the blue block left" and calls == ["stop"]
        text = stdout.getvalue()
        assert "sent 'push the blue block left'" in text and "ok: stopped" in text
        assert "no status from lapa_policy yet" in text
    finally:
        speaker.close()
        probe.close()


def test_bringup_starts_and_stops_every_process(tmp_path):
    from lapa_ros.bringup import Bringup
    from lapa_ros.launch_plan import LaunchPlan, NodeSpec, ProcessSpec

    the_plan = LaunchPlan(
        processes=(ProcessSpec("sleeper", "sleep", "http.server", ("0", "--bind", "127.0.0.1")),),
        nodes=(NodeSpec("lapa_camera", "lapa_camera_node", "lapa_ros.camera_node",
                        {"source": str(tmp_path / "missing.mp4"), "retry_s": 0.5}),))
    probe = RosProbe("bringup_probe")
    b = Bringup(the_plan, env=dict(os.environ), log_dir=tmp_path / "logs", cwd=REPO_ROOT)
    try:
        probe.record_status("/lapa_camera/status")
        b.start()
        assert set(b.procs) == {"sleeper", "lapa_camera"}
        wait_for(lambda: probe.latest("/lapa_camera/status"), 60, "the camera node's status")
        assert b.dead() == {}
        t0 = time.monotonic()
    finally:
        codes = b.stop()
        probe.close()
    assert all(p.poll() is not None for p in b.procs.values())
    assert codes["lapa_camera"] == 0  # SIGINT: a clean rclpy shutdown
    assert time.monotonic() - t0 < 15
    assert (tmp_path / "logs" / "lapa_camera.log").exists()
