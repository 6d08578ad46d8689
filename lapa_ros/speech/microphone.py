"""Audio sources and energy-based voice-activity segmentation into utterances.

Sources yield blocks of int16 mono 16 kHz audio: `MicrophoneSource` (needs the optional
`sounddevice` package and a PortAudio library) and `WavSource` (files or a directory of WAVs,
for tests and for replaying recorded sessions). `EnergyVad` cuts a block stream into utterances.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lapa_ros.speech.audio import SAMPLE_RATE_HZ, AudioFileError, read_wav

FRAME_MS = 30


@dataclass(frozen=True)
class VadConfig:
    """Energy VAD settings. Levels are RMS in dB relative to int16 full scale (dBFS)."""

    frame_ms: int = FRAME_MS
    min_level_dbfs: float = -45.0      # never call anything quieter than this speech
    margin_db: float = 12.0            # speech is this far above the running noise floor
    start_ms: int = 90                 # this much loud audio in a row starts an utterance
    end_silence_ms: int = 450          # this much quiet audio in a row ends it
    pre_roll_ms: int = 300             # audio kept from before the start (and kept after the end)
    min_utterance_ms: int = 200        # shorter bursts (clicks, bumps) are dropped
    max_utterance_ms: int = 8000       # longer ones are cut here
    noise_adapt: float = 0.05          # how fast the noise floor follows quiet frames

    def __post_init__(self) -> None:
        if self.frame_ms <= 0 or self.start_ms < self.frame_ms or self.end_silence_ms < self.frame_ms:
            raise ValueError("frame_ms must be positive and start_ms, end_silence_ms at least one frame")
        if not 0.0 < self.noise_adapt <= 1.0:
            raise ValueError(f"noise_adapt must be in (0, 1], got {self.noise_adapt}")
        if self.max_utterance_ms <= self.min_utterance_ms:
            raise ValueError("max_utterance_ms must exceed min_utterance_ms")


def level_dbfs(frame: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))) if frame.size else 0.0
    return 20.0 * np.log10(max(rms, 1e-3) / 32768.0)


class EnergyVad:
    """Cuts int16 audio into utterances: start after `start_ms` of frames above the threshold,
    end after `end_silence_ms` below it. The threshold follows a running noise floor (updated
    on quiet frames only) so a steady fan or hum does not count as speech.
    """

    def __init__(self, config: VadConfig | None = None, sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
        self.config = config or VadConfig()
        self.frame_len = sample_rate_hz * self.config.frame_ms // 1000
        self._ms = self.config.frame_ms
        self.reset()

    def reset(self) -> None:
        self.noise_floor_dbfs = self.config.min_level_dbfs - self.config.margin_db
        self._pending = np.zeros(0, np.int16)
        self._history: deque[np.ndarray] = deque(maxlen=max(1, self.config.pre_roll_ms // self._ms))
        self._utterance: list[np.ndarray] = []
        self._levels: list[float] = []
        self._loud_run = 0
        self._quiet_run = 0

    @property
    def threshold_dbfs(self) -> float:
        return max(self.config.min_level_dbfs, self.noise_floor_dbfs + self.config.margin_db)

    @property
    def in_utterance(self) -> bool:
        return bool(self._utterance)

    def push(self, block: np.ndarray) -> list[np.ndarray]:
        """Feed audio; returns the utterances that ended inside it (usually none)."""
        audio = np.concatenate([self._pending, np.asarray(block, np.int16).ravel()])
        n = audio.size // self.frame_len * self.frame_len
        self._pending = audio[n:]
        done = []
        for frame in audio[:n].reshape(-1, self.frame_len):
            utterance = self._frame(frame)
            if utterance is not None:
                done.append(utterance)
        return done

    def flush(self) -> np.ndarray | None:
        """End of stream: the utterance in progress, if long enough."""
        utterance = self._finish() if self._utterance else None
        self.reset()
        return utterance

    def _frame(self, frame: np.ndarray) -> np.ndarray | None:
        cfg = self.config
        level = level_dbfs(frame)
        loud = level > self.threshold_dbfs
        if not self._utterance:
            self._history.append(frame)
            self._loud_run = self._loud_run + 1 if loud else 0
            if not loud:  # follow the floor down at once, up slowly
                step = 1.0 if level < self.noise_floor_dbfs else cfg.noise_adapt
                self.noise_floor_dbfs += step * (level - self.noise_floor_dbfs)
            if self._loud_run * self._ms >= cfg.start_ms:
                self._utterance = list(self._history)
                self._levels = [level_dbfs(f) for f in self._utterance]
                self._history.clear()
                self._quiet_run = 0
            return None
        self._utterance.append(frame)
        self._levels.append(level)
        self._quiet_run = 0 if loud else self._quiet_run + 1
        if len(self._utterance) * self._ms >= cfg.max_utterance_ms:
            # Nobody speaks that long without a pause: most likely steady noise (a fan, a motor)
            # that started loud. Lift the floor to its quieter part so it stops counting as speech.
            self.noise_floor_dbfs = max(self.noise_floor_dbfs, float(np.percentile(self._levels, 20)))
            return self._finish(trim=False)
        if self._quiet_run * self._ms >= cfg.end_silence_ms:
            return self._finish()
        return None

    def _finish(self, trim: bool = True) -> np.ndarray | None:
        cfg = self.config
        frames, quiet_run, self._utterance = self._utterance, self._quiet_run, []
        self._loud_run = self._quiet_run = 0
        # Keep at most pre_roll_ms of the trailing silence: the decoder wants some, not all.
        trailing = max(0, quiet_run - cfg.pre_roll_ms // self._ms) if trim else 0
        frames = frames[: len(frames) - trailing] if trailing else frames
        speech_ms = len(frames) * self._ms - cfg.pre_roll_ms
        return np.concatenate(frames) if speech_ms >= cfg.min_utterance_ms else None


def segment(blocks: Iterable[np.ndarray], vad: EnergyVad) -> Iterator[np.ndarray]:
    """Utterances from a stream of blocks; the one in progress at the end is flushed."""
    for block in blocks:
        yield from vad.push(block)
    last = vad.flush()
    if last is not None:
        yield last


# ---------------------------------------------------------------------------- sources
def wav_paths(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files named directly, or the `*.wav` files of a directory in name order."""
    items = [spec] if isinstance(spec, str | Path) else list(spec)
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.wav"))
            if not found:
                raise AudioFileError(f"no .wav files in directory {p}")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise AudioFileError(f"no such WAV file or directory: {p}")
    return paths


class WavSource:
    """Replays WAV files as blocks, each file a separate stream (the VAD is reset between files)."""

    def __init__(self, spec: str | Path | Sequence[str | Path], block_ms: int = 100) -> None:
        self.paths = wav_paths(spec)
        self.block_len = SAMPLE_RATE_HZ * block_ms // 1000

    def files(self) -> Iterator[tuple[Path, Iterator[np.ndarray]]]:
        for path in self.paths:
            audio = read_wav(path)
            yield path, (audio[i:i + self.block_len] for i in range(0, audio.size, self.block_len))

    def utterances(self, vad: EnergyVad) -> Iterator[tuple[Path, np.ndarray]]:
        for path, blocks in self.files():
            vad.reset()
            for utterance in segment(blocks, vad):
                yield path, utterance


class MicrophoneUnavailable(RuntimeError):
    pass


def _import_sounddevice():
    try:
        import sounddevice
    except ImportError:
        raise MicrophoneUnavailable("microphone input needs the optional `sounddevice` package "
                                    "(pip install sounddevice) and the PortAudio library "
                                    "(apt-get install libportaudio2); or replay WAV files instead") from None
    except OSError as exc:  # sounddevice is installed but libportaudio is not
        raise MicrophoneUnavailable(f"sounddevice cannot load PortAudio ({exc}); install it with "
                                    "`apt-get install libportaudio2`, or replay WAV files instead") from None
    return sounddevice


class MicrophoneSource:
    """Blocks of int16 mono 16 kHz audio from the default (or a named) input device."""

    def __init__(self, device: str | int | None = None, block_ms: int = FRAME_MS,
                 max_queued_blocks: int = 200) -> None:
        self._sd = _import_sounddevice()
        self.device = device
        self.block_len = SAMPLE_RATE_HZ * block_ms // 1000
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=max_queued_blocks)
        self.dropped_blocks = 0
        self._stream = None

    def _callback(self, indata, frames, time_info, status) -> None:  # runs on PortAudio's thread
        try:
            self._queue.put_nowait(np.array(indata[:, 0], np.int16))
        except queue.Full:
            self.dropped_blocks += 1

    def __enter__(self) -> MicrophoneSource:
        self._stream = self._sd.InputStream(samplerate=SAMPLE_RATE_HZ, channels=1, dtype="int16",
                                            blocksize=self.block_len, device=self.device,
                                            callback=self._callback)
        self._stream.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None

    def blocks(self, timeout_s: float = 0.5) -> Iterator[np.ndarray | None]:
        """Audio blocks; None when nothing arrived within `timeout_s` (lets callers check for shutdown)."""
        while self._stream is not None:
            try:
                yield self._queue.get(timeout=timeout_s)
            except queue.Empty:
                yield None
