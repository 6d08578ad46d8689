"""Chunk execution (lapa/chunking.py, the ROS policy node's and `lapa eval`'s): first n actions, temporal ensembling."""

import threading

import numpy as np
import pytest

from lapa.chunking import ChunkExecutor


def chunk(values, k=4):
    a = np.zeros((k, 7))
    a[:, 0] = values
    return a


def test_first_n_runs_n_actions_then_asks_again():
    ex = ChunkExecutor("first_n", n=2)
    assert ex.action_for(0) is None and ex.needs_request(0)
    ex.add_chunk(chunk([1, 2, 3, 4]), obs_time_s=5.0, start_tick=0)
    a = ex.action_for(0)
    assert a.action[0] == 1 and a.obs_time_s == 5.0 and a.index == 0 and not ex.needs_request(0)
    assert ex.action_for(1).action[0] == 2 and not ex.needs_request(1)
    assert ex.action_for(2) is None and ex.needs_request(2)  # n used up


def test_a_late_reply_skips_the_ticks_already_gone():
    ex = ChunkExecutor("first_n", n=4)
    ex.add_chunk(chunk([1, 2, 3, 4]), 1.0, start_tick=10)
    a = ex.action_for(12)
    assert a.action[0] == 3 and a.index == 2
    assert ex.action_for(14) is None


def test_first_n_counts_its_n_ticks_from_the_arrival():
    ex = ChunkExecutor("first_n", n=1)
    ex.add_chunk(chunk([1, 2, 3, 4]), 1.0, start_tick=10, arrival_tick=11)  # a model slower than a period
    assert ex.action_for(10) is None  # not before it arrived
    a = ex.action_for(11)
    assert a.action[0] == 2 and a.index == 1 and not ex.needs_request(11)
    assert ex.action_for(12) is None and ex.needs_request(12)
    ex.add_chunk(chunk([1, 2], k=2), 1.0, start_tick=12, arrival_tick=15)  # later than the chunk reaches
    assert ex.action_for(15) is None


def test_first_n_a_newer_chunk_replaces_the_old_one_but_not_an_older_one():
    ex = ChunkExecutor("first_n", n=4)
    ex.add_chunk(chunk([1, 2, 3, 4]), 1.0, start_tick=0)
    ex.add_chunk(chunk([10, 20, 30, 40]), 2.0, start_tick=1)
    a = ex.action_for(1)
    assert a.action[0] == 10 and a.obs_time_s == 2.0
    ex.add_chunk(chunk([5, 5, 5, 5]), 0.5, start_tick=0)  # a reply to an older request: ignored
    assert ex.action_for(2).action[0] == 20


def test_first_n_larger_than_the_chunk_stops_at_its_end():
    ex = ChunkExecutor("first_n", n=8)
    ex.add_chunk(chunk([1, 2], k=2), 1.0, start_tick=0)
    assert [ex.action_for(t).action[0] for t in range(2)] == [1, 2]
    assert ex.action_for(2) is None and ex.needs_request(2)


def test_clear_forgets_everything():
    ex = ChunkExecutor("first_n", n=4)
    ex.add_chunk(chunk([1, 2, 3, 4]), 1.0, start_tick=0)
    ex.clear()
    assert ex.action_for(1) is None and ex.needs_request(1)


def test_ensemble_averages_overlapping_predictions_for_the_same_tick():
    ex = ChunkExecutor("ensemble", ensemble_decay=0.0)
    ex.add_chunk(chunk([1, 2, 3, 4]), 1.0, start_tick=0)  # covers ticks 0..3
    assert ex.action_for(0).action[0] == 1
    ex.add_chunk(chunk([10, 20, 30, 40]), 2.0, start_tick=1)  # covers ticks 1..4
    a = ex.action_for(1)  # (2 + 10) / 2
    assert a.action[0] == pytest.approx(6.0) and a.obs_time_s == 2.0 and a.index == 0
    assert ex.needs_request(1)
    assert ex.action_for(4).action[0] == 40  # only the second chunk still covers tick 4


def test_ensemble_weights_favour_fresh_predictions():
    ex = ChunkExecutor("ensemble", ensemble_decay=1.0)
    ex.add_chunk(chunk([0, 0, 0, 0]), 1.0, start_tick=0)
    ex.add_chunk(chunk([1, 1, 1, 1]), 2.0, start_tick=2)  # tick 2: old chunk has age 2, new age 0
    w_old, w_new = np.exp(-2.0), 1.0
    assert ex.action_for(2).action[0] == pytest.approx(w_new / (w_old + w_new))


def test_ensemble_drops_expired_chunks():
    ex = ChunkExecutor("ensemble")
    ex.add_chunk(chunk([1, 2], k=2), 1.0, start_tick=0)
    assert ex.action_for(1).action[0] == 2
    assert ex.action_for(2) is None


def test_add_chunk_checks_shape_and_modes_are_validated():
    ex = ChunkExecutor()
    with pytest.raises(ValueError):
        ex.add_chunk(np.zeros((4, 6)), 1.0, 0)
    with pytest.raises(ValueError):
        ex.add_chunk(np.zeros(7), 1.0, 0)
    with pytest.raises(ValueError):
        ChunkExecutor("replay")
    with pytest.raises(ValueError):
        ChunkExecutor(n=0)
    with pytest.raises(ValueError):
        ChunkExecutor("ensemble", ensemble_decay=-1.0)


def test_concurrent_adds_and_takes_are_safe():
    ex = ChunkExecutor("ensemble")
    stop = threading.Event()

    def producer():
        for t in range(20000):
            if stop.is_set():
                return
            ex.add_chunk(np.ones((4, 7)), 1.0, start_tick=t // 100)

    th = threading.Thread(target=producer)
    th.start()
    try:
        for tick in range(2000):
            a = ex.action_for(tick // 10)
            assert a is None or np.allclose(a.action, 1.0)
    finally:
        stop.set()
        th.join()
