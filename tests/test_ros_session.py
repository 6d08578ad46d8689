"""The demo's loop end to end: policy server (scripted expert), lapa_sim (franky-sim) and lapa_policy
(franky backend) as processes, an instruction, lapa_sim's success, and a clean stop of everything."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("franky")

from lapa_ros.session import LoopSession, SessionConfig, summarize_stats  # noqa: E402

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]


def test_an_instruction_through_the_whole_loop_reaches_the_block(tmp_path):
    session = LoopSession(SessionConfig(out_dir=tmp_path, model="expert", camera_hz=15.0, image_size=64))
    try:
        session.start(timeout_s=240)
        result = session.run_episode("reach the green block", seed=3)
        assert result.success, f"no success in {result.duration_s:.1f} s; status {session.policy_status}"
        assert result.frames > 0 and result.task == "reach_green"
    finally:
        codes = session.close()
    assert set(codes) == {"lapa_server", "lapa_sim", "lapa_policy"}
    assert all(code is not None for code in codes.values())  # every process ended
    stats = session.policy_stats()
    numbers = summarize_stats(stats, stats["control_hz"])
    assert numbers["commands"] > 5 and numbers["latency_p50_ms"] > 0
    assert 0 < numbers["node_to_command_p50_ms"] <= numbers["latency_p50_ms"]
    # the stages: each reply's own parts, so their p50s are ordered as the parts are
    assert 0 < numbers["robot_call_p50_ms"] <= numbers["reply_to_command_p50_ms"] <= numbers["node_to_command_p50_ms"]
    assert numbers["transport_p50_ms"] > 0 and numbers["server_overhead_p50_ms"] >= 0
    assert numbers["model_p50_ms"] <= numbers["server_p50_ms"] <= numbers["round_trip_p50_ms"]
