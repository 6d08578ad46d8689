"""`lapa eval`'s chunk execution: ClosedLoopExecutor over lapa.chunking.ChunkExecutor, in simulated ticks."""

from __future__ import annotations

import numpy as np
import pytest

from lapa.errors import UserError
from lapa.eval.closed_loop import ClosedLoopExecutor, evaluate_checkpoint, evaluate_policy
from lapa.sim.env import Observation
from lapa.sim.tasks import FAMILIES


class CountingPolicy:
    """Call c (0-based) replies with a chunk whose action i has x = 100 * c + i: the value names chunk and index."""

    def __init__(self, k: int = 3, image_size: int | None = None):
        self.k, self.image_size = k, image_size
        self.calls, self.resets = 0, 0
        self.seen: list[dict] = []

    def infer(self, obs):
        if self.image_size is not None:
            assert obs["image"].shape == (self.image_size, self.image_size, 3)
        self.seen.append(obs)
        actions = np.zeros((self.k, 7), np.float32)
        actions[:, 0] = 100 * self.calls + np.arange(self.k)
        self.calls += 1
        return {"actions": actions, "model_ms": 2.0}

    def reset(self):
        self.resets += 1


def _obs(tick: int = 0, size: int = 32) -> Observation:
    state = np.zeros(8, np.float32)
    state[0] = tick  # which step the observation belongs to
    return Observation(np.zeros((size, size, 3), np.uint8), state, "reach the red block")


def _run(ex: ClosedLoopExecutor, steps: int, start: int = 0) -> list[float]:
    return [float(ex(_obs(start + t))[0]) for t in range(steps)]


def test_first_n_1_is_plain_closed_loop_and_passes_image_instruction_and_state():
    policy = CountingPolicy(k=3, image_size=16)
    ex = ClosedLoopExecutor(policy, "first_n", 1, image_size=16)
    assert _run(ex, 4) == [0, 100, 200, 300]  # the first action of a fresh chunk at every step
    assert policy.calls == ex.calls == 4 and ex.model_ms == pytest.approx(8.0)
    first = policy.seen[0]
    assert set(first) == {"image", "instruction", "state"} and first["instruction"] == "reach the red block"
    assert first["state"].dtype == np.float32 and first["state"].shape == (8,)
    assert [o["state"][0] for o in policy.seen] == [0, 1, 2, 3], "each step's proprio state reaches the policy"


def test_first_n_k_replays_whole_chunks_asking_once_per_k_steps():
    policy = CountingPolicy(k=3)
    ex = ClosedLoopExecutor(policy, "first_n", 3)
    assert _run(ex, 7) == [0, 1, 2, 100, 101, 102, 200]
    assert policy.calls == 3 and [o["state"][0] for o in policy.seen] == [0, 3, 6]


@pytest.mark.parametrize("n,expected,calls", [(2, [0, 1, 100, 101, 200, 201], 3), (5, [0, 1, 2, 100, 101, 102], 2)])
def test_first_n_runs_n_actions_but_never_past_the_chunk(n, expected, calls):
    policy = CountingPolicy(k=3)
    ex = ClosedLoopExecutor(policy, "first_n", n)
    assert _run(ex, 6) == expected
    assert policy.calls == calls


@pytest.mark.parametrize("decay", [0.0, 0.5, 2.0])
def test_ensemble_asks_every_step_and_averages_overlapping_chunks(decay):
    policy = CountingPolicy(k=3)
    ex = ClosedLoopExecutor(policy, "ensemble", ensemble_decay=decay)
    got = _run(ex, 5)
    assert policy.calls == ex.calls == 5, "ensemble asks the policy every step"

    def expected(tick):  # chunk c (requested at tick c) predicts 100 c + (tick - c) for ticks c .. c + 2
        cs = [c for c in range(tick + 1) if tick - c < 3]
        w = np.exp(-decay * np.array([tick - c for c in cs], float))
        v = np.array([100 * c + (tick - c) for c in cs], float)
        return float((w * v).sum() / w.sum())

    assert got == pytest.approx([expected(t) for t in range(5)])
    assert got[0] == 0  # alone
    if decay == 0.0:
        assert got[1:4] == pytest.approx([(1 + 100) / 2, (2 + 101 + 200) / 3, (102 + 201 + 300) / 3])


def test_actions_are_float32_7_vectors():
    for ex in (ClosedLoopExecutor(CountingPolicy(), "first_n", 2), ClosedLoopExecutor(CountingPolicy(), "ensemble")):
        for t in range(3):
            a = ex(_obs(t))
            assert a.dtype == np.float32 and a.shape == (7,)


@pytest.mark.parametrize("mode,n", [("first_n", 3), ("ensemble", 1)])
def test_reset_clears_chunks_restarts_ticks_and_resets_the_policy(mode, n):
    policy = CountingPolicy(k=3)
    ex = ClosedLoopExecutor(policy, mode, n, ensemble_decay=0.0)
    _run(ex, 2)
    calls = policy.calls
    ex.reset()
    assert policy.resets == 1 and ex.tick == 0
    # a fresh chunk at index 0, nothing left of the last episode's chunks (they also covered tick 0)
    assert float(ex(_obs())[0]) == 100 * calls and policy.calls == calls + 1
    assert ex.calls == calls + 1, "calls add up over episodes"


def test_bad_options_are_refused():
    with pytest.raises(ValueError):
        ClosedLoopExecutor(CountingPolicy(), "first")
    with pytest.raises(ValueError):
        ClosedLoopExecutor(CountingPolicy(), "first_n", 0)
    with pytest.raises(ValueError):
        ClosedLoopExecutor(CountingPolicy(), "ensemble", ensemble_decay=-1.0)
    for kwargs in ({"chunk_mode": "chunk"}, {"execute_n": 0}, {"ensemble_decay": float("nan")}):
        with pytest.raises(UserError):  # before the (here missing) checkpoint is even looked at
            evaluate_checkpoint("/nonexistent/ckpt", "reach", 1, **kwargs)


def test_evaluate_policy_feeds_the_real_observation_and_reports_success_per_family():
    class Still(CountingPolicy):
        def infer(self, obs):
            assert obs["state"].dtype == np.float32 and obs["state"].shape == (8,)
            reply = super().infer(obs)
            reply["actions"][:] = 0.0
            return reply

    policy = Still(k=4)
    ex = ClosedLoopExecutor(policy, "first_n", 4)
    result = evaluate_policy(ex, "reach", 1, render_size=32, progress=False, reset=ex.reset)
    assert set(result["success"]) == {"reach"}
    assert result["success"]["reach"] == result["tasks"]["reach"]["success_rate"]
    assert 0 <= result["success"]["reach"] <= 1
    steps = result["episodes"][0]["steps"]
    assert steps <= FAMILIES["reach"].max_steps and policy.calls == -(-steps // 4) and policy.resets == 1
