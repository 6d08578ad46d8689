"""SCHED_FIFO for the frame-to-command path: the helper, lapa_policy's inference thread, the server flag."""

from __future__ import annotations

import os
import threading
import time

import pytest
from policy_fakes import ServerProcess

from lapa.realtime import make_thread_realtime
from lapa_ros.inference import FrameBuffer, InferenceWorker
from policy_server.app import main as server_main


def test_out_of_range_priorities_are_refused_and_zero_does_nothing():
    with pytest.raises(ValueError, match="1..99"):
        make_thread_realtime(100)
    with pytest.raises(ValueError, match="1..99"):
        make_thread_realtime(-1)
    policy = os.sched_getscheduler(0)
    assert make_thread_realtime(0) is None and os.sched_getscheduler(0) == policy


def test_a_refusal_is_returned_not_raised(monkeypatch):
    def refuse(*_args):
        raise PermissionError("Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    assert "PermissionError" in make_thread_realtime(10)


def _realtime_allowed() -> bool:
    """May a thread of this process go SCHED_FIFO? (Asked on a thread that then ends.)"""
    answer: list[str | None] = []
    probe = threading.Thread(target=lambda: answer.append(make_thread_realtime(1)))
    probe.start()
    probe.join()
    return answer[0] is None


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling only")
def test_the_inference_thread_runs_at_the_given_priority_when_allowed():
    allowed = _realtime_allowed()
    worker = InferenceWorker("ws://127.0.0.1:9", FrameBuffer(), lambda _r: None, lambda _m, _f: None,
                             rt_priority=5, connect_timeout_s=0.1, reconnect_backoff_s=(0.05, 0.05))
    worker.start()
    try:
        deadline = time.monotonic() + 5.0
        tid = worker._thread.native_id
        while allowed and os.sched_getscheduler(tid) != os.SCHED_FIFO and time.monotonic() < deadline:
            time.sleep(0.01)
        if allowed:
            assert os.sched_getscheduler(tid) == os.SCHED_FIFO and os.sched_getparam(tid).sched_priority == 5
        else:  # refused: logged, and the worker runs on at normal priority
            time.sleep(0.2)
            assert os.sched_getscheduler(tid) == os.SCHED_OTHER and worker._thread.is_alive()
    finally:
        worker.close()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the test's own thread untouched


def test_the_server_refuses_an_out_of_range_priority(capsys):
    assert server_main(["--backend", "torch", "--model", "x", "--rt-priority", "100"]) == 2
    assert "--rt-priority must be 0 (off) or 1..99" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling only")
def test_the_server_event_loop_and_its_model_thread_run_at_the_given_priority_when_allowed(tmp_path):
    allowed = _realtime_allowed()
    server = ServerProcess(tmp_path / "server.log", args=["--rt-priority", "7"],
                           env={"LAPA_FAKE_IMAGE_SIZE": "32"})
    try:
        server.start()
        pid = server.proc.pid
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        policies = {tid: os.sched_getscheduler(tid) for tid in tids}
        if allowed:
            assert os.sched_getparam(pid).sched_priority == 7  # the main thread: the event loop
            # the model thread (which loaded the policy) and the others were started by the loop: they inherit it
            assert len(tids) >= 2 and set(policies.values()) == {os.SCHED_FIFO}, policies
        else:
            assert "stays at normal priority" in server.log()
    finally:
        server.stop()
