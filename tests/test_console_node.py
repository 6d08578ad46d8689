"""The lapa_console node as a process: it refuses to serve beyond loopback without a key, and a
console whose page cannot be served ends instead of running blind."""

from __future__ import annotations

import socket
import time

import pytest
from ros_helpers import NodeProcess, wait_for

pytest.importorskip("rclpy")
pytestmark = pytest.mark.timeout(120)


def test_no_key_no_open_address(tmp_path, monkeypatch):
    monkeypatch.delenv("LAPA_API_KEY", raising=False)
    node = NodeProcess("lapa_ros.console.node", tmp_path / "console.log", {"host": "0.0.0.0", "port": 18999},
                       env={"LAPA_API_KEY": ""}).start()
    try:
        wait_for(lambda: not node.alive(), 60, "the console to refuse")
    finally:
        code = node.stop()
    assert code != 0 and "API key" in node.log()


def test_a_taken_port_ends_the_node(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = NodeProcess("lapa_ros.console.node", tmp_path / "console.log", {"port": port}).start()
        try:
            t0 = time.monotonic()
            wait_for(lambda: not node.alive(), 60, "the console to give up")
            assert time.monotonic() - t0 < 60
        finally:
            node.stop()
    assert "shutting down" in node.log(), node.log()
