"""Long recordings in constant memory: block reading, streaming resampling, scoring.

``audio_blocks`` decodes a file of any sample rate and channel count block by block
(soundfile), averages the channels and resamples with soxr's streaming resampler, so a
one-hour file never sits in memory. ``run_stream`` pushes such blocks through a Streamer and
a Detector, then flushes the streamer so the end of the audio is scored too; it keeps the
per-frame scores only when asked (for a plot or an evaluation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from kwskit import SAMPLE_RATE
from kwskit.errors import AudioError, KwsError
from kwskit.stream.detector import Detection, Detector

if TYPE_CHECKING:  # torch-free at run time: the ONNX runtime streams through here too
    from kwskit.stream.chunking import ChunkedStream as Streamer


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def audio_duration(path: str | os.PathLike) -> float:
    """Length of an audio file in seconds, from its header."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for bad headers
        raise AudioError(path, f"unreadable audio ({_short(exc)})") from None
    return info.frames / info.samplerate if info.samplerate else 0.0


def audio_blocks(path: str | os.PathLike, block_s: float = 0.1,
                 sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Yield float32 mono blocks at ``sample_rate`` of about ``block_s`` seconds each.

    Memory stays constant whatever the file's length: one block of the file is decoded at a
    time, downmixed, and resampled by ``soxr.ResampleStream`` (HQ), whose internal state
    carries the filter history across blocks. Raises AudioError for an unreadable file.
    """
    if not block_s > 0:
        raise KwsError(f"block_s: must be > 0 seconds, got {block_s!r}")
    try:
        f = sf.SoundFile(str(path))
    except Exception as exc:
        raise AudioError(path, f"unreadable audio ({_short(exc)})") from None
    with f:
        sr = int(f.samplerate)
        block = max(1, int(round(block_s * sr)))
        rs = soxr.ResampleStream(sr, sample_rate, 1, dtype="float32",
                                 quality="HQ") if sr != sample_rate else None
        try:
            while True:
                data = f.read(block, dtype="float32", always_2d=True)
                last = data.shape[0] < block
                mono = np.ascontiguousarray(data.mean(axis=1), dtype=np.float32)
                if rs is not None:
                    mono = rs.resample_chunk(mono, last=last)
                if mono.size:
                    yield mono
                if last:
                    break
        except RuntimeError as exc:  # libsndfile decode error in the middle of a file
            raise AudioError(path, f"decoding failed ({_short(exc)})") from None


@dataclass
class StreamResult:
    """What ``run_stream`` found in one recording."""

    source: str
    duration_s: float
    detections: list[Detection] = field(default_factory=list)
    scores: np.ndarray | None = None  # (frames, classes) when kept
    times: np.ndarray | None = None  # (frames,) seconds
    envelope: np.ndarray | None = None  # (blocks, 2): block end time [s], peak |sample|

    def to_dict(self) -> dict:
        return {"source": self.source, "duration_s": round(self.duration_s, 3),
                "detections": [d.to_dict() for d in self.detections]}


class _Growing:
    """Append-only float32 rows without quadratic re-copying (doubling capacity)."""

    def __init__(self, cols: int):
        self.buf = np.zeros((1024, cols), np.float32)
        self.n = 0

    def add(self, rows: np.ndarray) -> None:
        m = rows.shape[0]
        if self.n + m > self.buf.shape[0]:
            cap = max(2 * self.buf.shape[0], self.n + m)
            new = np.zeros((cap, self.buf.shape[1]), self.buf.dtype)
            new[: self.n] = self.buf[: self.n]
            self.buf = new
        self.buf[self.n : self.n + m] = rows
        self.n += m

    def value(self, dtype=np.float32) -> np.ndarray:
        return self.buf[: self.n].astype(dtype, copy=True)


def run_stream(streamer: Streamer, blocks: Iterable[np.ndarray], detector: Detector | None = None,
               keep_scores: bool = False, source: str = "<stream>", total_s: float | None = None,
               on_frames: Callable[[np.ndarray, np.ndarray, list], None] | None = None,
               progress: bool = True, flush: bool = True) -> StreamResult:
    """Score a stream of sample blocks (mono, at the streamer's rate) from the start.

    Args:
        streamer: reset here, then fed every block.
        blocks: iterable of 1-D float arrays (``audio_blocks``, a microphone, an array split).
        detector: reset here; its detections (finished at the end) go into the result.
        keep_scores: keep (frames, classes) probabilities and times (4 bytes per class and
            frame: 14 MB for an hour at 100 frames/s and 10 classes); otherwise memory is
            constant.
        on_frames: called with (scores, times, new detections) after every block.
        total_s: expected seconds, for the progress bar.
        flush: when the blocks end, push out the frames still waiting for look-ahead
            (``Streamer.flush``: zero samples) so the audio is scored to its end.
    """
    streamer.reset()
    if detector is not None:
        detector.reset()
    kept = _Growing(streamer.num_classes) if keep_scores else None
    found: list[Detection] = []
    env = _Growing(2) if keep_scores else None
    bar = tqdm(total=round(total_s, 1) if total_s else None, unit="s", desc=os.path.basename(source),
               disable=None if progress else True, leave=False,
               bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s [{elapsed}<{remaining}]")

    def consume(scores: np.ndarray) -> None:
        times = streamer.last_times
        new = detector.update(scores, times) if detector is not None else []
        found.extend(new)
        if kept is not None and len(times):
            kept.add(scores)
        if on_frames is not None:
            on_frames(scores, times, new)

    with bar:
        for block in blocks:
            consume(streamer.step(block))
            if env is not None and len(block):
                peak = float(np.max(np.abs(block)))
                env.add(np.array([[streamer.samples_in / streamer.sample_rate, peak]]))
            bar.update(len(block) / streamer.sample_rate)
    if flush:
        consume(streamer.flush())
    if detector is not None:
        tail = detector.finish()
        found += tail
        if on_frames is not None and tail:
            on_frames(np.zeros((0, streamer.num_classes), np.float32), np.zeros(0), tail)
    result = StreamResult(source, streamer.samples_in / streamer.sample_rate, found)
    if kept is not None:
        result.scores = kept.value()
        # times are exact multiples of the frame step: recompute in float64
        result.times = streamer.frame_times(kept.n, start=0)
        result.envelope = env.value()
    return result


def stream_file(streamer: Streamer, path: str | os.PathLike, detector: Detector | None = None,
                chunk_ms: float = 100.0, keep_scores: bool = False,
                progress: bool = True) -> StreamResult:
    """``run_stream`` over an audio file read in ``chunk_ms`` blocks (constant memory)."""
    if not (isinstance(chunk_ms, (int, float)) and chunk_ms > 0):
        raise KwsError(f"chunk_ms: must be > 0 milliseconds, got {chunk_ms!r}")
    total = audio_duration(path)
    blocks = audio_blocks(path, chunk_ms / 1000.0, streamer.sample_rate)
    return run_stream(streamer, blocks, detector, keep_scores, str(path), total, progress=progress)


def array_blocks(signal: np.ndarray, block: int) -> Iterator[np.ndarray]:
    """Consecutive ``block``-sample slices of a 1-D array."""
    for i in range(0, len(signal), block):
        yield signal[i : i + block]
