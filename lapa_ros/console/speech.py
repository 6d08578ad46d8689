"""Push-to-talk from the browser: an uploaded WAV through the same offline recogniser as `lapa_speech`.

The recogniser (pocketsphinx with the task grammar, lapa_ros/speech) takes a few seconds to build,
so it is built on the first upload and kept. The page shows the result (text, confidence, accepted
or why not) before the operator sends it.
"""

from __future__ import annotations

import threading
from typing import Any

from lapa_ros.speech.audio import SAMPLE_RATE_HZ, AudioFileError, decode_wav_bytes

MAX_AUDIO_S = 15.0
MAX_UPLOAD_BYTES = 4 << 20  # 15 s of 16-bit stereo 48 kHz is 2.9 MB


class SpeechInputError(ValueError):
    """An upload that is not audio the recogniser can take (the page gets a 4xx)."""


class SpeechUnavailable(RuntimeError):
    """No recogniser on this machine (pocketsphinx missing or its model broken): the page gets a 503."""


class BrowserSpeech:
    def __init__(self, threshold: float | None = None, stop_threshold: float | None = None) -> None:
        self._kwargs = {k: v for k, v in (("threshold", threshold), ("stop_threshold", stop_threshold))
                        if v is not None}
        self._recognizer = None
        self._lock = threading.Lock()

    def recognizer(self):
        """The recogniser, built on first use (a few seconds); SpeechUnavailable when it cannot be built."""
        with self._lock:
            if self._recognizer is None:
                try:
                    from lapa_ros.speech.recognizer import CommandRecognizer

                    self._recognizer = CommandRecognizer(**self._kwargs)
                except (ImportError, ValueError, RuntimeError) as e:
                    raise SpeechUnavailable(f"speech recognition is not available here: {e}") from None
            return self._recognizer

    def recognize_wav(self, data: bytes) -> dict[str, Any]:
        """WAV bytes -> the recognition as a dict (text, command, confidence, accepted, kind, reason, ...)."""
        if not data:
            raise SpeechInputError("empty upload: send a WAV file (16-bit PCM, 16 kHz mono)")
        if len(data) > MAX_UPLOAD_BYTES:
            raise SpeechInputError(f"upload of {len(data)} bytes exceeds {MAX_UPLOAD_BYTES}")
        try:
            pcm = decode_wav_bytes(data)
        except AudioFileError as e:
            raise SpeechInputError(str(e)) from None
        if pcm.size > MAX_AUDIO_S * SAMPLE_RATE_HZ:
            raise SpeechInputError(f"{pcm.size / SAMPLE_RATE_HZ:.1f} s of audio: at most {MAX_AUDIO_S:g} s")
        return self.recognizer().recognize(pcm).to_dict()
