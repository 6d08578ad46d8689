"""PCM audio as the recogniser wants it: int16, mono, 16 kHz; WAV reading with the `wave` module."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE_HZ = 16000


class AudioFileError(ValueError):
    """A file that is not a readable PCM WAV."""


def to_int16_mono(samples: np.ndarray) -> np.ndarray:
    """(N,) or (N, C) int16 or float in [-1, 1] -> (N,) int16, channels averaged."""
    a = np.asarray(samples)
    if a.ndim not in (1, 2):
        raise ValueError(f"audio must have shape (N,) or (N, channels), got {a.shape}")
    if a.dtype == np.int16 and a.ndim == 1:
        return a
    scale = 32767.0 if np.issubdtype(a.dtype, np.floating) else 1.0  # float audio is in [-1, 1]
    a = a.astype(np.float64) * scale
    if a.ndim == 2:
        a = a.mean(axis=1)
    return np.clip(np.rint(a), -32768, 32767).astype(np.int16)


def resample(samples: np.ndarray, rate_hz: int, target_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Band-limited resampling of mono int16: windowed-sinc low-pass, then linear interpolation.

    Speech needs nothing finer; it keeps numpy the only dependency.
    """
    x = np.asarray(samples, np.float64)
    if rate_hz == target_hz or x.size == 0:
        return np.asarray(samples, np.int16)
    if rate_hz > target_hz:  # anti-aliasing filter below the new Nyquist frequency
        cutoff = 0.45 * target_hz / rate_hz  # cycles per input sample
        taps = int(8 * rate_hz / target_hz) | 1
        n = np.arange(taps) - taps // 2
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)
        x = np.convolve(x, h / h.sum(), mode="same")
    n_out = int(round(x.size * target_hz / rate_hz))
    t = np.arange(n_out) * (rate_hz / target_hz)
    y = np.interp(t, np.arange(x.size), x)
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


def _decode_frames(raw: bytes, sample_width: int, channels: int) -> np.ndarray:
    if sample_width == 1:  # unsigned 8-bit
        a = (np.frombuffer(raw, np.uint8).astype(np.int16) - 128) * 256
    elif sample_width == 2:
        a = np.frombuffer(raw, "<i2")
    elif sample_width == 3:  # 24-bit little-endian: keep the top 16 bits
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        a = (b[:, 1].astype(np.int16) | (b[:, 2].astype(np.int16) << 8)).astype(np.int16)
    elif sample_width == 4:
        a = (np.frombuffer(raw, "<i4") >> 16).astype(np.int16)
    else:
        raise AudioFileError(f"unsupported sample width {sample_width} bytes")
    return a.reshape(-1, channels) if channels > 1 else a


def read_wav(path: str | Path, target_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """A PCM WAV file as (N,) int16 mono at `target_hz`, whatever its rate, width and channels."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except FileNotFoundError:
        raise AudioFileError(f"cannot read {path}: no such file") from None
    except (wave.Error, EOFError, OSError) as exc:
        raise AudioFileError(f"cannot read {path} as a PCM WAV file ({exc}); "
                             "convert it to 16-bit PCM WAV, e.g. 16 kHz mono") from None
    if rate <= 0 or channels <= 0:
        raise AudioFileError(f"cannot read {path}: invalid header (rate {rate} Hz, {channels} channels)")
    samples = to_int16_mono(_decode_frames(raw[: len(raw) - len(raw) % (width * channels)], width, channels))
    return resample(samples, rate, target_hz)


def decode_wav_bytes(data: bytes, target_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """A PCM WAV file's bytes (an upload) as (N,) int16 mono at `target_hz`."""
    import io

    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise AudioFileError(f"not a PCM WAV file ({exc}); send 16-bit PCM WAV, e.g. 16 kHz mono") from None
    if rate <= 0 or channels <= 0:
        raise AudioFileError(f"invalid WAV header (rate {rate} Hz, {channels} channels)")
    samples = to_int16_mono(_decode_frames(raw[: len(raw) - len(raw) % (width * channels)], width, channels))
    return resample(samples, rate, target_hz)
