"""`lapa_speech`: spoken commands, offline, from a microphone or replayed WAV files.

  in   microphone (sounddevice) or parameter `wav_files` (files and/or directories of *.wav)
  out  <instruction_topic> (/lapa/instruction)  std_msgs/String  accepted task commands ("please" dropped)
  out  <result_topic> (/lapa/speech/result)     std_msgs/String  JSON of every recognition, accepted or not:
                                                                 text, command, confidence, accepted, kind,
                                                                 task, reason, source, durations
  call <stop_service> (/lapa/stop)              std_srvs/Trigger on an accepted "stop" / "stop the robot" / "cancel"

Audio is cut into utterances by an energy VAD and recognised by `CommandRecognizer` (pocketsphinx
with the task grammar) in a worker thread; results reach ROS through a queue drained by a timer,
so publishing and service calls happen on the executor and the executor never waits on audio.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from lapa_ros.parameters import declare_parameters
from lapa_ros.speech.microphone import EnergyVad, MicrophoneSource, VadConfig, WavSource
from lapa_ros.speech.recognizer import DEFAULT_STOP_THRESHOLD, DEFAULT_THRESHOLD, CommandRecognizer, Recognition

NODE_NAME = "lapa_speech"

# name: (default, description). Types follow the defaults; wav_files is a string array, unset by default.
PARAMETERS: dict[str, tuple[object, str]] = {
    "instruction_topic": ("/lapa/instruction", "std_msgs/String topic for accepted task commands"),
    "result_topic": ("/lapa/speech/result", "std_msgs/String topic with a JSON record of every recognition"),
    "stop_service": ("/lapa/stop", "std_srvs/Trigger service called when an operator says stop"),
    "confidence_threshold": (DEFAULT_THRESHOLD, "task commands below this confidence are not accepted (0..1)"),
    "stop_confidence_threshold": (DEFAULT_STOP_THRESHOLD, "stop commands below this confidence are not "
                                  "accepted (0..1; lower than for tasks: a false stop is safe)"),
    "microphone_device": ("", "sounddevice input device name or index; empty: the default input"),
    "vad_min_level_dbfs": (-45.0, "audio quieter than this (RMS dBFS) is never speech"),
    "vad_margin_db": (12.0, "speech is at least this far above the running noise floor"),
    "vad_end_silence_ms": (450, "this much silence ends an utterance"),
    "wait_for_subscribers_s": (5.0, "WAV replay: wait up to this long for a subscriber on the instruction "
                               "topic before the first file"),
    "replay_interval_s": (0.2, "WAV replay: pause between utterances"),
    "exit_after_replay": (False, "WAV replay: shut the node down when every file has been played"),
    "stop_service_wait_s": (1.0, "how long a stop waits for the stop service to appear before warning"),
}
WAV_FILES_DESCRIPTION = ("WAV files and/or directories of *.wav to replay instead of the microphone "
                         "(any PCM rate/width/channels; each file is segmented by the VAD)")


@dataclass(frozen=True)
class Heard:
    """A recognition and where its audio came from."""

    result: Recognition
    source: str
    stamp: float


class SpeechNode:
    def __init__(self, args: list[str] | None = None) -> None:
        from rcl_interfaces.msg import ParameterDescriptor
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self.node = node = Node(NODE_NAME)
        node.declare_parameter("wav_files", Parameter.Type.STRING_ARRAY,
                               ParameterDescriptor(description=WAV_FILES_DESCRIPTION))
        p = self.params = declare_parameters(node, PARAMETERS)
        wav_files = list(node.get_parameter("wav_files").value or [])
        self.log = node.get_logger()
        self._String, self._Trigger = String, Trigger

        t0 = time.monotonic()
        self.recognizer = CommandRecognizer(threshold=float(p["confidence_threshold"]),
                                            stop_threshold=float(p["stop_confidence_threshold"]))
        self.vad = EnergyVad(VadConfig(min_level_dbfs=float(p["vad_min_level_dbfs"]),
                                       margin_db=float(p["vad_margin_db"]),
                                       end_silence_ms=int(p["vad_end_silence_ms"])))
        # Open the source now so a missing microphone or file fails at start-up, with its reason.
        if wav_files:
            self.source: WavSource | MicrophoneSource = WavSource(wav_files)
            what = f"{len(self.source.paths)} WAV file(s)"
        else:
            device = p["microphone_device"]
            self.source = MicrophoneSource(int(device) if device.isdigit() else (device or None))
            what = f"microphone {device or '(default)'}"
        self.log.info(f"recogniser ready in {time.monotonic() - t0:.1f} s; listening to {what}")

        self.pub_instruction = node.create_publisher(String, p["instruction_topic"], 10)
        self.pub_result = node.create_publisher(String, p["result_topic"], 10)
        self.stop_client = node.create_client(Trigger, p["stop_service"])
        self._heard: queue.Queue[Heard] = queue.Queue()
        self._stop_deadline: float | None = None
        self.replay_done = threading.Event()
        self._closing = threading.Event()
        node.create_timer(0.02, self._drain)
        self._worker = threading.Thread(target=self._listen, name="lapa-speech", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------ worker thread
    def _listen(self) -> None:
        try:
            if isinstance(self.source, WavSource):
                self._replay(self.source)
            else:
                self._listen_microphone(self.source)
        except Exception as e:  # noqa: BLE001 - a dead worker must say why
            self.log.error(f"speech input failed: {type(e).__name__}: {e}")
        finally:
            self.replay_done.set()

    def _recognise(self, audio: np.ndarray, source: str) -> None:
        self._heard.put(Heard(self.recognizer.recognize(audio), source, time.time()))

    def _replay(self, source: WavSource) -> None:
        deadline = time.monotonic() + float(self.params["wait_for_subscribers_s"])
        while self.pub_instruction.get_subscription_count() == 0 and time.monotonic() < deadline:
            if self._closing.wait(0.05):
                return
        for path, utterance in source.utterances(self.vad):
            if self._closing.is_set():
                return
            self._recognise(utterance, path.name)
            self._closing.wait(float(self.params["replay_interval_s"]))

    def _listen_microphone(self, mic: MicrophoneSource) -> None:
        with mic:
            for block in mic.blocks():
                if self._closing.is_set():
                    return
                if block is None:
                    continue
                for utterance in self.vad.push(block):
                    self._recognise(utterance, "microphone")
                if mic.dropped_blocks:
                    self.log.warning(f"{mic.dropped_blocks} audio block(s) dropped: recognition is too slow")
                    mic.dropped_blocks = 0

    # ------------------------------------------------------------ executor side
    def _drain(self) -> None:
        while True:
            try:
                heard = self._heard.get_nowait()
            except queue.Empty:
                break
            self._handle(heard)
        if self._stop_deadline is not None:
            self._try_stop()
        if (self.params["exit_after_replay"] and self.replay_done.is_set() and self._heard.empty()
                and self._stop_deadline is None):
            self.log.info("replay finished; shutting down")
            self.node.context.try_shutdown()

    def _handle(self, heard: Heard) -> None:
        r = heard.result
        record = {**r.to_dict(), "source": heard.source, "stamp": heard.stamp}
        self.pub_result.publish(self._String(data=json.dumps(record)))
        summary = f"{heard.source}: {r.text or '(nothing)'!r} confidence {r.confidence:.2f}"
        if not r.accepted:
            self.log.info(f"rejected {summary}: {r.reason}")
        elif r.kind == "stop":
            self.log.info(f"STOP {summary}")
            self._stop_deadline = time.monotonic() + float(self.params["stop_service_wait_s"])
            self._try_stop()
        else:
            self.log.info(f"command {summary} -> {r.task.name if r.task else '?'}")
            self.pub_instruction.publish(self._String(data=r.command))

    def _try_stop(self) -> None:
        if self.stop_client.service_is_ready():
            self._stop_deadline = None
            self.stop_client.call_async(self._Trigger.Request()).add_done_callback(self._stopped)
        elif time.monotonic() > (self._stop_deadline or 0.0):
            self._stop_deadline = None
            self.log.warning(f"heard stop, but the stop service {self.params['stop_service']} is not "
                             "available: the robot was NOT stopped by this command")

    def _stopped(self, future) -> None:
        try:
            response = future.result()
        except Exception as e:  # noqa: BLE001 - report any failure of the call
            self.log.warning(f"stop service call failed: {e}")
            return
        if response is None or not response.success:
            self.log.warning(f"stop service refused: {getattr(response, 'message', 'no response')}")
        else:
            self.log.info(f"stop service: {response.message or 'ok'}")

    def close(self) -> None:
        self._closing.set()
        self._worker.join(5.0)
        self.node.destroy_node()


def main(argv: list[str] | None = None) -> int:
    from lapa_ros.ros_main import run_node

    return run_node(SpeechNode, argv, threads=2)


if __name__ == "__main__":
    raise SystemExit(main())

