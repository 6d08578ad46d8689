"""`lapa_speech` as a real ROS 2 process replaying the WAV fixtures: task commands arrive on the
instruction topic, "stop" calls /lapa/stop, every recognition is reported on /lapa/speech/result.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from ros_helpers import NodeProcess, RosProbe, wait_for

pytest.importorskip("rclpy")
pytest.importorskip("pocketsphinx")

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "speech"
EXPECTED = [  # file name order in the fixture directory
    "nudge the yellow cube forward",
    "pick up the red block",
    "push the blue block left",
    "put the green block on the yellow block",
    "reach the green block",
]


@pytest.fixture
def ros_env(monkeypatch):
    """A domain of our own for the probe (this process) and the node (inherits os.environ)."""
    monkeypatch.setenv("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


@pytest.fixture
def probe(ros_env):
    p = RosProbe("lapa_speech_test_probe")
    yield p
    p.close()


@pytest.fixture
def start_node(tmp_path, ros_env):
    started: list[NodeProcess] = []

    def start(**params) -> NodeProcess:
        node = NodeProcess("lapa_ros.speech_node", tmp_path / f"speech{len(started)}.log", params)
        started.append(node.start())
        return node

    yield start
    for node in started:
        node.stop()


def test_replayed_commands_reach_the_instruction_topic_and_stop_calls_the_service(probe, start_node):
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    instructions = probe.record(String, "/lapa/instruction", convert=lambda m: m.data)
    results = probe.record(String, "/lapa/speech/result", convert=lambda m: json.loads(m.data))
    stops = []
    lock = threading.Lock()

    def on_stop(request, response):
        with lock:
            stops.append(request)
        response.success = True
        response.message = "stopped"
        return response

    probe.node.create_service(Trigger, "/lapa/stop", on_stop)
    node = start_node(wav_files=[str(FIXTURES)], wait_for_subscribers_s=60.0, replay_interval_s=0.0)

    def done():
        if not node.alive():
            raise RuntimeError(f"lapa_speech exited:\n{node.log()[-3000:]}")
        return len(instructions) >= len(EXPECTED) and stops and any(
            r[1]["source"] == "what_is_the_weather_today.wav" for r in results)

    try:
        wait_for(done, 180, "the replayed commands")
    except TimeoutError as e:
        raise TimeoutError(f"{e}: heard {[i[1] for i in instructions]}, stops {len(stops)}\n"
                           f"{node.log()[-3000:]}") from None
    assert [text for _, text in instructions] == EXPECTED
    assert len(stops) == 1
    by_source = {r["source"]: r for _, r in results}
    assert by_source["stop.wav"]["kind"] == "stop" and by_source["stop.wav"]["accepted"]
    for name in ("what_is_the_weather_today.wav", "noise.wav"):
        assert not by_source[name]["accepted"], by_source[name]
        assert 0.0 <= by_source[name]["confidence"] < 1.0
    for text in EXPECTED:
        r = next(r for r in by_source.values() if r["text"] == text)
        assert r["accepted"] and r["kind"] == "task" and r["task"]


def test_stop_without_a_stop_service_warns_and_replay_can_exit(probe, start_node):
    from std_msgs.msg import String

    probe.record(String, "/lapa/instruction")  # a listener, so the replay starts at once
    node = start_node(wav_files=[str(FIXTURES / "stop.wav")], exit_after_replay=True,
                      stop_service="/lapa_speech_test/no_such_stop", stop_service_wait_s=0.5)
    wait_for(lambda: not node.alive(), 120, "lapa_speech to exit after the replay")
    assert node.proc.returncode == 0, node.log()[-3000:]
    log = node.log()
    assert "STOP stop.wav" in log
    assert "the robot was NOT stopped" in log, log[-3000:]
