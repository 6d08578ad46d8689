"""`lapa bench loop`'s pieces that need no ROS: the served model alone, and paired stage percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from bench.loop import model_alone
from lapa_ros.session import summarize_stats


def test_model_alone_times_the_served_backend(monkeypatch):
    monkeypatch.setenv("LAPA_FAKE_IMAGE_SIZE", "32")
    monkeypatch.setenv("LAPA_FAKE_DELAY_MS", "3")
    alone = model_alone("", "policy_fakes:make_policy", rate_hz=50.0)
    assert alone["backend"] == "policy_fakes:make_policy" and alone["threads"] == 1
    assert alone["back_to_back_p50_ms"] >= 3.0 and alone["at_50hz_p50_ms"] >= 3.0  # the fake sleeps 3 ms a call


def test_stage_parts_are_per_reply_differences():
    # two replies: their own server overheads are 1 and 3 ms; the difference of the p50s would be 0
    stats = {"model_ms": [10.0, 1.0], "server_ms": [11.0, 4.0], "round_trip_ms": [11.5, 5.0]}
    numbers = summarize_stats(stats, 10.0)
    assert numbers["server_overhead_p50_ms"] == pytest.approx(np.median([1.0, 3.0]))
    assert numbers["transport_p50_ms"] == pytest.approx(np.median([0.5, 1.0]))
    assert summarize_stats({}, 10.0)["server_overhead_p50_ms"] is None
