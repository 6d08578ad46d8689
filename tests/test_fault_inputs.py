"""Fault handling pieces that need no ROS: frames whose stamp does not advance are dropped, a
WebSocket close frame between requests ends the link, the misbehaving server backend's modes, and
the fault benchmark's measurements."""

from __future__ import annotations

import time

import numpy as np
import pytest
from policy_fakes import ServerProcess

from bench import fault_metrics as fm
from bench.fault_policy import FaultyPolicy, corrupt, parse_mode
from lapa_ros.inference import Frame, FrameBuffer, _link_alive


def frame(capture_s: float, receipt_s: float) -> Frame:
    return Frame(np.zeros((2, 2, 3), np.uint8), capture_s, receipt_s, capture_s)


def test_frames_whose_stamp_does_not_advance_are_dropped():
    buf = FrameBuffer()
    assert buf.put(frame(100.0, 1.0))
    assert not buf.put(frame(100.0, 1.1))  # a frozen camera: the same message again
    assert not buf.put(frame(99.5, 1.2))  # stamps jumping backwards
    assert buf.newest().receipt_mono_s == 1.0  # the newest frame keeps ageing: the filter will hold
    assert buf.rejected == 2 and buf.received == 1
    assert buf.put(frame(100.1, 1.3))  # the camera is healthy again
    assert buf.newest().receipt_mono_s == 1.3


def test_fault_modes_of_the_misbehaving_backend():
    actions = np.full((2, 7), 0.01, np.float32)
    assert parse_mode("") == ("", None)
    assert parse_mode("late:0.7") == ("late", 0.7)
    assert parse_mode("shape:1,6") == ("shape", (1, 6))
    with pytest.raises(ValueError):
        parse_mode("explode")
    assert np.isnan(corrupt(actions, "nan", None)[0, 0])
    assert np.allclose(corrupt(actions, "huge", None), 10.0)
    assert corrupt(actions, "shape", (0, 7)).shape == (0, 7)
    assert np.all(actions == 0.01)  # the wrapped policy's array is not modified


def test_the_mode_file_is_read_on_every_call(tmp_path):
    class Inner:
        metadata = {"control_hz": 10.0}

        def infer(self, obs):
            return {"actions": np.zeros((1, 7), np.float32)}

        def reset(self):
            pass

    mode = tmp_path / "mode"
    policy = FaultyPolicy(Inner(), mode)
    assert policy.infer({})["actions"].shape == (1, 7)  # no file yet: healthy
    mode.write_text("shape:1,6")
    assert policy.infer({})["actions"].shape == (1, 6)
    mode.write_text("late:0.2")
    t0 = time.monotonic()
    policy.infer({})
    assert time.monotonic() - t0 >= 0.2
    mode.write_text("")
    assert policy.infer({})["actions"].shape == (1, 7)


@pytest.mark.timeout(60)
def test_a_server_stopping_gracefully_ends_an_idle_websocket_link(tmp_path):
    from policy_server.client import PolicyClient

    server = ServerProcess(tmp_path / "server.log").start()
    client = PolicyClient(server.ws_url, retries=0)
    try:
        client.connect()
        assert _link_alive(client)
        server.stop()  # SIGTERM: uvicorn sends a close frame to the open WebSocket
        deadline = time.monotonic() + 10.0
        while _link_alive(client) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _link_alive(client), "the closed link still reads as alive"
    finally:
        client.close()
        server.stop()


def tcp_track(speeds_m_s: list[float], dt: float = 0.02) -> list:
    """Receipt time = simulated time; the TCP moves along x at the given speeds."""
    out, x, t = [], 0.0, 0.0
    for v in speeds_m_s:
        out.append((t, t, np.array([x, 0.0, 0.0])))
        x += v * dt
        t += dt
    return out


def test_rest_time_travel_and_period_displacement():
    track = tcp_track([0.2] * 10 + [0.1] * 5 + [0.0] * 20)  # moving until t = 0.3 s, then still
    rest = fm.rest_time(track, 0.0, 1.0)
    assert rest == pytest.approx(0.3, abs=1e-9)
    assert fm.travel(track, 0.0, 1.0) == pytest.approx(0.2 * 0.2 + 0.1 * 0.1, abs=1e-9)
    assert fm.max_period_displacement(track, 0.1) == pytest.approx(0.02, abs=1e-9)
    assert fm.rest_time(tcp_track([0.2] * 30), 0.0, 1.0) is None  # never settles
    assert fm.speed_at(track, 0.1) == pytest.approx(0.2, rel=1e-6)


def test_speed_at_falls_back_to_the_last_two_samples_of_a_sparse_trace():
    sparse = tcp_track([0.2] * 10, dt=0.2)  # 5 Hz: one sample per 0.15 s window at most
    assert fm.speed_at(sparse, 0.9) == pytest.approx(0.2, rel=1e-6)  # samples at 0.6 and 0.8
    assert fm.speed_at(sparse, 0.9, max_span_s=0.25) is None  # 0.6 lies outside
    assert fm.speed_at(sparse, -1.0) is None


def test_commanded_steps_and_states():
    steps = [(0.0, np.array([0.03, 0, 0, 0, 0, 0, 1.0])), (0.1, np.array([0, 0.01, 0, 0, 0, 0, 1.0]))]
    assert fm.max_commanded_step(steps) == pytest.approx(0.03)
    assert fm.commands_between(steps, 0.0, 0.1) == 1
    statuses = [(0.0, {"state": "running", "reason": "executing"}), (0.5, {"state": "fault", "reason": "Robot error"})]
    assert fm.status_matches(fm.latched_state(statuses, 0.0, 1.0), ("fault",), "robot error")
    assert not fm.status_matches(fm.latched_state(statuses, 0.0, 0.2), ("fault",), None)
