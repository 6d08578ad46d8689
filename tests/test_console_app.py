"""The console's web app without ROS: every endpoint with and without the API key, bad input, the
live WebSocket (camera frames and telemetry), the page's assets, the vocabulary and the recorder."""

from __future__ import annotations

import io
import json
import os
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lapa_ros.console.app import COMMANDS, FRAME_CAMERA, FRAME_POLICY, STATIC_FILES, create_app
from lapa_ros.console.recorder import EpisodeRecorder
from lapa_ros.console.telemetry import Telemetry, controller_state
from lapa_ros.console.vocabulary import suggestions

SPEECH = Path(__file__).resolve().parent / "fixtures" / "speech"
KEY = "s3cret-console-key"


class RecordingRobot:
    """A RobotLink that keeps what the page asked for (the ROS side is tested in test_console_browser.py)."""

    def __init__(self, ok: bool = True) -> None:
        self.said: list[str] = []
        self.commands: list[str] = []
        self.ok = ok

    def say(self, text: str) -> None:
        self.said.append(text)

    def command(self, name: str) -> tuple[bool, str]:
        self.commands.append(name)
        return (True, f"{name} done") if self.ok else (False, f"/lapa/{name} is not available")

    def policy_image_hw(self) -> tuple[int, int]:
        return (64, 64)


class ImaginingSource:
    """An IntentSource answering from a table (the real one, intent.py, is tested against a server in
    test_intent.py and in the browser test)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.asked: list[tuple[tuple[int, ...], str]] = []

    def available(self) -> bool:
        return True

    def intent(self, image, instruction):
        self.asked.append((image.shape, instruction))
        if self.error is not None:
            raise self.error
        return {"frames_png": ["iVBORw0KGgo="], "latent_tokens": [[1, 2, 3, 4]], "model_ms": 5.0}


def make(tmp_path, api_key=None, robot=None, intent=None):
    robot = robot or RecordingRobot()
    telemetry = Telemetry()
    recorder = EpisodeRecorder(tmp_path / "rec", fps=10, image_hw=(64, 64))
    client = TestClient(create_app(robot, telemetry, recorder, api_key=api_key, intent=intent))
    return client, robot, telemetry, recorder


ROUTES = [("GET", "/api/state", None), ("GET", "/api/vocabulary", None),
          ("POST", "/api/instruction", {"text": "reach the red block"}),
          *[("POST", f"/api/command/{c}", None) for c in COMMANDS],
          ("POST", "/api/recording", {"on": False}), ("POST", "/api/intent", {"text": "reach the red block"})]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_api_route_needs_the_key_when_one_is_set(tmp_path, method, path, body):
    client, robot, _, _ = make(tmp_path, api_key=KEY)
    r = client.request(method, path, json=body)
    assert r.status_code == 401 and r.json()["error"] == "missing or wrong API key"
    r = client.request(method, path, json=body, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401
    assert not robot.said and not robot.commands  # nothing reached the robot
    r = client.request(method, path, json=body, headers={"X-API-Key": KEY})
    assert r.status_code != 401
    r = client.request(method, path + "?api_key=" + KEY, json=body)
    assert r.status_code != 401


def test_speech_needs_the_key(tmp_path):
    client, *_ = make(tmp_path, api_key=KEY)
    r = client.post("/api/speech", content=b"RIFF", headers={"Content-Type": "audio/wav"})
    assert r.status_code == 401


def test_the_live_stream_needs_the_key(tmp_path):
    from starlette.websockets import WebSocketDisconnect

    client, *_ = make(tmp_path, api_key=KEY)
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws") as ws:
        ws.receive_text()
    with client.websocket_connect(f"/ws?api_key={KEY}") as ws:
        assert json.loads(ws.receive_text())["type"] == "telemetry"


def test_the_page_and_its_assets_load_without_a_key_and_use_no_cdn(tmp_path):
    client, *_ = make(tmp_path, api_key=KEY)
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in STATIC_FILES:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200, name
        assert "http://" not in r.text and "https://" not in r.text, f"{name} loads something from elsewhere"
    assert client.get("/static/secret.txt").status_code == 401  # not an asset: behind the key
    client, *_ = make(tmp_path)
    assert client.get("/static/secret.txt").status_code == 404
    assert client.get("/static/..%2Fapp.py").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}


def test_instruction_is_published_and_bad_input_is_a_4xx(tmp_path):
    client, robot, _, _ = make(tmp_path)
    r = client.post("/api/instruction", json={"text": "  push the blue   block left "})
    assert r.status_code == 200 and r.json() == {"sent": "push the blue block left", "task": "push_blue_left"}
    assert robot.said == ["push the blue block left"]
    r = client.post("/api/instruction", json={"text": "wave hello"})
    assert r.status_code == 200 and r.json()["task"] is None  # sent: the policy may know more than the grammar
    for body, status in (({"text": ""}, 422), ({"text": "   "}, 422), ({"text": 3}, 422), ({}, 422),
                         ({"text": "x" * 600}, 422), ({"text": "go\x00now"}, 422), ([1, 2], 422)):
        r = client.post("/api/instruction", json=body)
        assert r.status_code == status, body
        assert r.json()["status"] == status and r.json()["error"]
    assert client.post("/api/instruction", content=b"{not json", headers={"Content-Type": "application/json"}
                       ).status_code == 400
    assert client.post("/api/instruction", content=b"text=hi", headers={"Content-Type": "text/plain"}
                       ).status_code == 415
    big = b'{"text": "' + b"a" * 20000 + b'"}'
    assert client.post("/api/instruction", content=big, headers={"Content-Type": "application/json"}
                       ).status_code == 413
    assert robot.said == ["push the blue block left", "wave hello"]


def test_commands_reach_the_robot_and_failures_say_why(tmp_path):
    client, robot, _, _ = make(tmp_path)
    for name in COMMANDS:
        r = client.post(f"/api/command/{name}")
        assert r.status_code == 200 and r.json()["command"] == name and r.json()["elapsed_ms"] >= 0
    assert robot.commands == list(COMMANDS)
    r = client.post("/api/command/explode")
    assert r.status_code == 404 and "unknown command" in r.json()["error"]
    assert client.get("/api/command/estop").status_code == 405
    client, robot, _, _ = make(tmp_path, robot=RecordingRobot(ok=False))
    r = client.post("/api/command/estop")
    assert r.status_code == 503 and "not available" in r.json()["error"]


class SlowHomeRobot(RecordingRobot):
    def command(self, name: str) -> tuple[bool, str]:
        if name == "home":
            time.sleep(3.0)
        return super().command(name)


def test_the_emergency_stop_never_waits_behind_slow_commands(tmp_path):
    import threading

    client, robot, _, _ = make(tmp_path, robot=SlowHomeRobot())
    with client:  # one event loop for every request, as in the server
        n = min(32, (os.cpu_count() or 1) + 4) + 4  # more moves home than asyncio's default pool has threads
        homes = [threading.Thread(target=client.post, args=("/api/command/home",)) for _ in range(n)]
        for t in homes:
            t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        r = client.post("/api/command/estop")
        elapsed = time.monotonic() - t0
        for t in homes:
            t.join(30)
    assert r.status_code == 200 and elapsed < 1.0, elapsed
    assert robot.commands.index("estop") < robot.commands.count("home")  # it went first


def wav_bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_speech_upload_recognises_and_rejects(tmp_path):
    pytest.importorskip("pocketsphinx")
    client, robot, _, _ = make(tmp_path)
    r = client.post("/api/speech", content=wav_bytes(SPEECH / "pick_up_the_red_block.wav"),
                    headers={"Content-Type": "audio/wav"})
    assert r.status_code == 200
    result = r.json()
    assert result["accepted"] and result["command"] == "pick up the red block" and result["task"] == "pick_red"
    assert 0 < result["confidence"] <= 1
    r = client.post("/api/speech", content=wav_bytes(SPEECH / "what_is_the_weather_today.wav"),
                    headers={"Content-Type": "audio/wav"})
    assert r.status_code == 200 and not r.json()["accepted"] and r.json()["reason"]
    assert robot.said == []  # recognition alone sends nothing


def test_speech_bad_input_is_a_4xx(tmp_path):
    client, *_ = make(tmp_path)
    wav = {"Content-Type": "audio/wav"}
    assert client.post("/api/speech", content=b"", headers=wav).status_code == 400
    r = client.post("/api/speech", content=b"RIFF....WAVEjunk", headers=wav)
    assert r.status_code == 400 and "WAV" in r.json()["error"]
    assert client.post("/api/speech", content=b"x", headers={"Content-Type": "audio/ogg"}).status_code == 415
    assert client.post("/api/speech", content=b"x" * (5 << 20), headers=wav).status_code == 413
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:  # 20 s: too long for a command
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(16000 * 20, np.int16).tobytes())
    r = client.post("/api/speech", content=buf.getvalue(), headers=wav)
    assert r.status_code == 400 and "at most" in r.json()["error"]


def test_speech_without_a_recogniser_is_a_503(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pocketsphinx(name, *args, **kwargs):
        if name == "pocketsphinx":
            raise ImportError("No module named 'pocketsphinx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pocketsphinx)
    client, *_ = make(tmp_path)
    r = client.post("/api/speech", content=(SPEECH / "stop.wav").read_bytes(), headers={"Content-Type": "audio/wav"})
    assert r.status_code == 503 and "pocketsphinx" in r.json()["error"]


def test_recording_toggle_validates_and_reports(tmp_path):
    client, _, _, recorder = make(tmp_path)
    for body in ({"on": "yes"}, {"on": 1}, {}):
        assert client.post("/api/recording", json=body).status_code == 422
    r = client.post("/api/recording", json={"on": True})
    assert r.status_code == 200 and r.json()["recording"] and recorder.recording
    assert client.get("/api/state").json()["recording"]["recording"]
    assert not client.post("/api/recording", json={"on": False}).json()["recording"]


def test_intent_without_a_model_that_imagines_is_a_404(tmp_path):
    client, *_ = make(tmp_path)
    r = client.post("/api/intent", json={"text": "reach the red block"})
    assert r.status_code == 404 and "latent-action head" in r.json()["error"]
    assert client.post("/api/intent", json={"text": ""}).status_code == 422
    assert client.get("/api/state").json()["intent_available"] is False


def test_intent_passes_the_newest_frame_and_maps_failures_to_4xx_5xx(tmp_path):
    source = ImaginingSource()
    client, robot, telemetry, _ = make(tmp_path, intent=source)
    assert client.get("/api/state").json()["intent_available"] is True
    r = client.post("/api/intent", json={"text": "reach the red block"})
    assert r.status_code == 409 and "no camera image" in r.json()["error"]
    telemetry.put_frame(np.zeros((48, 64, 3), np.uint8))
    r = client.post("/api/intent", json={"text": "reach the red block"})
    assert r.status_code == 200 and r.json()["latent_tokens"] == [[1, 2, 3, 4]]
    assert source.asked == [((48, 64, 3), "reach the red block")] and robot.said == []  # a preview sends nothing
    for error, status in ((ConnectionError("server down"), 503), (ValueError("refused (422): bad image"), 422)):
        client, _, telemetry, _ = make(tmp_path, intent=ImaginingSource(error))
        telemetry.put_frame(np.zeros((48, 64, 3), np.uint8))
        r = client.post("/api/intent", json={"text": "reach the red block"})
        assert r.status_code == status and r.json()["error"]


def test_live_stream_sends_camera_policy_view_and_steps(tmp_path):
    import cv2

    client, _, telemetry, _ = make(tmp_path)
    image = np.zeros((120, 160, 3), np.uint8)
    image[:, :80, 0] = 255  # left half red
    telemetry.put_frame(image)
    telemetry.put_status({"state": "running", "reason": "executing 'reach the red block'",
                          "instruction": "reach the red block", "control_hz": 10.0})
    telemetry.put_step({"stamp_s": time.time(), "action": [0.01, 0, 0, 0, 0, 0, 1],
                        "state": [0.5, 0, 0.2, 3.14, 0, 0, 0.04, 0.04], "instruction": "reach the red block",
                        "latency_ms": 42.0})
    got: dict = {}
    with client.websocket_connect("/ws") as ws:
        while len(got) < 3:
            msg = ws.receive()
            if msg.get("bytes"):
                got[msg["bytes"][0]] = msg["bytes"][1:]
            elif msg.get("text"):
                got["telemetry"] = json.loads(msg["text"])
    camera = cv2.imdecode(np.frombuffer(got[FRAME_CAMERA], np.uint8), cv2.IMREAD_COLOR)
    policy = cv2.imdecode(np.frombuffer(got[FRAME_POLICY], np.uint8), cv2.IMREAD_COLOR)
    assert camera.shape == (120, 160, 3) and policy.shape == (64, 64, 3)
    assert camera[60, 20, 2] > 200 and camera[60, 140, 2] < 50  # red stays on the left (BGR on the wire)
    assert policy[32, 5, 2] > 200 and policy[32, 60, 2] < 50
    t = got["telemetry"]
    assert t["state"]["state"] == "running" and t["state"]["instruction"] == "reach the red block"
    assert t["steps"][0]["action"][0] == pytest.approx(0.01) and t["steps"][0]["latency_ms"] == 42.0
    assert t["steps"][0]["ee"] == [0.5, 0.0, 0.2]


def test_controller_state_words():
    assert controller_state({}, None) == "offline"
    assert controller_state({"state": "running"}, 10.0) == "offline"  # stale status
    assert controller_state({"state": "running"}, 0.1) == "running"
    assert controller_state({"state": "stopped"}, 0.1) == "idle"
    assert controller_state({"state": "holding"}, 0.1) == "holding"
    assert controller_state({"state": "fault", "fault": "robot error: reflex"}, 0.1) == "fault"
    assert controller_state({"state": "fault", "fault": "emergency stop (/lapa/emergency_stop): call "
                             "/lapa/start to resume"}, 0.1) == "e-stopped"


def test_last_stop_reason_is_kept_after_the_robot_runs_again():
    t = Telemetry()
    t.put_status({"state": "holding", "reason": "no image yet"})  # starting up: not a stop
    t.put_status({"state": "running", "reason": "executing"})
    assert t.summary()["last_stop_reason"] is None
    t.put_status({"state": "holding", "reason": "stale image: 600 ms old"})
    assert t.summary()["last_stop_reason"] == "stale image: 600 ms old"
    t.put_status({"state": "fault", "reason": "emergency stop (/lapa/emergency_stop)"})
    t.put_status({"state": "running", "reason": "executing"})
    assert t.summary()["last_stop_reason"] == "emergency stop (/lapa/emergency_stop)"


def test_malformed_steps_are_refused():
    t = Telemetry()
    for bad in ({"action": [0] * 6}, {"action": [float("nan")] * 7}, {"action": [0] * 7, "state": [0] * 3}, {}):
        with pytest.raises(ValueError):
            t.put_step(bad)
    assert t.steps_since(0) == []


def test_suggestions_are_the_grammar_sentences():
    s = suggestions()
    assert "pick up the red block" in s and "push the blue block left" in s and "stop" in s
    assert "put the red block on the red block" not in s  # a block on itself is no task
    assert len(s) == len(set(s)) > 100


def test_recorder_writes_a_lerobot_v3_episode_per_instruction(tmp_path):
    from lapa.data.lerobot_v3 import LeRobotV3Dataset

    rec = EpisodeRecorder(tmp_path / "rec", fps=10, image_hw=(32, 32))
    frame = np.full((48, 64, 3), 90, np.uint8)
    assert not rec.add_step(frame, [0] * 8, [0] * 7, "reach the red block")  # off: nothing kept
    rec.start()
    for i in range(5):
        assert rec.add_step(frame, [0.5 + i * 0.01, 0, 0.2, 3.14, 0, 0, 0.04, 0.04], [0.01, 0, 0, 0, 0, 0, 1],
                            "reach the red block")
    for _ in range(3):  # a new instruction ends the episode and starts another
        rec.add_step(frame, [0.6, 0, 0.2, 3.14, 0, 0, 0.04, 0.04], [0, 0.01, 0, 0, 0, 0, 0], "reach the blue block")
    assert not rec.add_step(None, [0] * 8, [0] * 7, "reach the blue block")  # no camera frame yet
    rec.stop()
    rec.wait(60)
    status = rec.status()
    assert not status["errors"], status["errors"]
    assert [w["frames"] for w in status["written"]] == [5, 3]
    ds = LeRobotV3Dataset(status["written"][0]["path"])
    assert ds.num_episodes == 1 and ds.fps == 10
    ep = ds.episode(0)
    assert ep.task == "reach the red block" and ep.frames.shape == (5, 32, 32, 3)
    assert ep.actions.shape == (5, 7) and ep.states.shape == (5, 8)
    np.testing.assert_allclose(ep.actions[:, 0], 0.01, atol=1e-6)
    np.testing.assert_allclose(ep.states[:, 0], 0.5 + 0.01 * np.arange(5), atol=1e-6)
    assert abs(int(ep.frames[0].mean()) - 90) <= 3  # the camera frame, resized
