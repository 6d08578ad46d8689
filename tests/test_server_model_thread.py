"""Where the server runs the policy: a fast model on the event loop, a slow one on the model thread."""

from __future__ import annotations

import threading
import time

import numpy as np
from fastapi.testclient import TestClient
from policy_fakes import FakePolicy

from policy_server import codec
from policy_server.app import create_app, main
from policy_server.metrics import Metrics
from policy_server.service import PolicyService, ServiceConfig

MSGPACK = {"Content-Type": "application/msgpack"}


class ThreadRecordingPolicy(FakePolicy):
    """FakePolicy that notes the thread of every infer and reset call."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(image_size=(32, 32), delay_s=delay_s)
        self.infer_threads: list[int] = []
        self.reset_threads: list[int] = []

    def infer(self, obs):
        self.infer_threads.append(threading.get_ident())
        return super().infer(obs)

    def reset(self) -> None:
        self.reset_threads.append(threading.get_ident())
        super().reset()


def served(policy: ThreadRecordingPolicy, inline_model_max_ms: float) -> tuple[TestClient, PolicyService]:
    config = ServiceConfig(warmup_steps=3, inline_model_max_ms=inline_model_max_ms)
    service = PolicyService(lambda: policy, config, Metrics())
    return TestClient(create_app(service)), service


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)


def act_body(seed: int = 0) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return codec.packb({"image": image, "instruction": "push the blue block left"})


def loop_thread(service: PolicyService) -> int:
    """The event loop's thread: the one that checks readiness at the start of every request."""
    seen: list[int] = []
    check = service.check_ready

    def noting_thread() -> None:
        seen.append(threading.get_ident())
        check()

    service.check_ready = noting_thread
    return seen


def test_a_fast_model_runs_on_the_event_loop_reset_too():
    policy = ThreadRecordingPolicy()
    client, service = served(policy, inline_model_max_ms=10.0)
    with client:
        wait_ready(client)
        assert service.model_on_event_loop
        assert client.get("/v1/metadata").json()["model_on_event_loop"] is True
        warm_up_thread = policy.infer_threads[-1]
        loop = loop_thread(service)
        assert client.post("/v1/act", content=act_body(), headers=MSGPACK).status_code == 200
        assert client.post("/v1/reset").status_code == 200
    assert len(set(loop)) == 1
    assert policy.infer_threads[-1] == loop[0] != warm_up_thread  # loaded and warmed up on the model thread
    assert policy.reset_threads == [loop[0]]


def test_a_slow_model_keeps_the_model_thread_and_the_loop_answers_meanwhile():
    policy = ThreadRecordingPolicy(delay_s=0.3)  # 300 ms a call: over the 10 ms limit
    client, service = served(policy, inline_model_max_ms=10.0)
    with client:
        wait_ready(client)
        assert not service.model_on_event_loop
        assert client.get("/v1/metadata").json()["model_on_event_loop"] is False
        loop = loop_thread(service)
        reply: dict = {}
        caller = threading.Thread(target=lambda: reply.update(r=client.post("/v1/act", content=act_body(),
                                                                            headers=MSGPACK)))
        calls = len(policy.infer_threads)
        caller.start()
        while len(policy.infer_threads) == calls:  # the model call has started
            time.sleep(0.005)
        t0 = time.monotonic()
        assert client.get("/healthz").status_code == 200
        health_s = time.monotonic() - t0
        caller.join(10)
        assert reply["r"].status_code == 200
    assert health_s < 0.25, f"the health check waited {health_s:.3f} s for the model call"
    assert loop and policy.infer_threads[-1] not in loop


def test_zero_keeps_every_model_on_its_own_thread():
    policy = ThreadRecordingPolicy()
    client, service = served(policy, inline_model_max_ms=0.0)
    with client:
        wait_ready(client)
        loop = loop_thread(service)
        assert client.post("/v1/act", content=act_body(), headers=MSGPACK).status_code == 200
    assert not service.model_on_event_loop
    assert loop and policy.infer_threads[-1] not in loop


def test_a_negative_limit_is_refused(capsys):
    assert main(["--backend", "torch", "--model", "x", "--inline-model-ms", "-1"]) == 2
    assert "--inline-model-ms must be >= 0" in capsys.readouterr().err
