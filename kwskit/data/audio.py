"""Reading audio into the kwskit convention: float32 mono at 16 kHz in [-1, 1].

Odd audio is handled, not fatal: other sample rates are resampled with soxr, multi-channel
audio is averaged to mono, and ``fix_length`` pads or crops to a clip length. A file that
cannot be decoded raises ``AudioError`` naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from kwskit import SAMPLE_RATE
from kwskit.errors import AudioError

AUDIO_EXTENSIONS = (".wav", ".flac")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header facts of an audio file, without decoding it."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for bad headers
        raise AudioError(path, f"unreadable audio ({_short(exc)})") from None
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames))


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sample_rate`` (resampled, downmixed)."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(path, f"unreadable audio ({_short(exc)})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "audio file holds no samples")
    return to_mono_rate(data, sr, sample_rate)


def to_mono_rate(data: np.ndarray, sr: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(frames, channels) or (frames,) float array at ``sr`` -> mono float32 at ``sample_rate``."""
    data = np.asarray(data, dtype=np.float32)
    mono = data.mean(axis=1) if data.ndim == 2 else data
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def fix_length(x: np.ndarray, n: int) -> np.ndarray:
    """Pad with zeros at the end, or crop centred, to exactly ``n`` samples.

    Centre cropping keeps the word of a long Speech Commands style clip, which sits near the
    middle far more often than at the start.
    """
    if len(x) == n:
        return x
    if len(x) < n:
        return np.pad(x, (0, n - len(x)))
    start = (len(x) - n) // 2
    return x[start : start + n]


def write_audio(path: str | os.PathLike, x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM (WAV or FLAC by extension); clips to [-1, 1]."""
    sf.write(str(path), np.clip(x, -1.0, 1.0), sample_rate, subtype="PCM_16")


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
