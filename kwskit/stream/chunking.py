"""What every streamer does around the model, in numpy only (no torch): buffer samples into
whole steps, drop the model's warm-up frames, time the frames, flush a finite stream.

``Streamer`` (torch, kwskit.stream.streaming) and ``OnnxStreamer`` (ONNX Runtime,
kwskit.runtime) subclass ``ChunkedStream`` and implement ``_start`` (fresh model states) and
``_run`` (one call of the model on whole steps). See kwskit.stream.streaming for the timing.
"""

from __future__ import annotations

import math

import numpy as np

from kwskit.errors import KwsError


def as_samples(samples) -> np.ndarray:
    """1-D float32 samples from a numpy array or a tensor (KwsError otherwise)."""
    if hasattr(samples, "detach"):  # a torch tensor, without importing torch
        samples = samples.detach().cpu().numpy()
    if not isinstance(samples, np.ndarray):
        raise KwsError(f"samples: expected a 1-D numpy array or tensor, got "
                       f"{type(samples).__name__}")
    if samples.ndim != 1:
        raise KwsError(f"samples: expected a 1-D array of mono samples, got shape "
                       f"{tuple(samples.shape)}")
    if samples.size and samples.dtype.kind != "f":
        raise KwsError(f"samples: expected float samples in [-1, 1], got dtype {samples.dtype}")
    return samples.astype(np.float32, copy=False)


def check_chunk_ms(chunk_ms) -> float:
    if not (isinstance(chunk_ms, (int, float)) and chunk_ms > 0):
        raise KwsError(f"--chunk-ms: must be > 0, got {chunk_ms!r}")
    return float(chunk_ms)


def chunk_samples(chunk_ms: float, sample_rate: int, unit: int) -> int:
    """Samples per model call for about ``chunk_ms`` milliseconds: whole output frames of
    ``unit`` samples, at least one (the rounding ``kwskit export --stream`` applies)."""
    return max(1, round(check_chunk_ms(chunk_ms) / 1000.0 * sample_rate / unit)) * unit


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax in float64, returned as float32. Warm-up rows may hold inf/NaN (a window with
    nothing in it yet); they are dropped afterwards, so their warnings are silenced."""
    z = logits.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        z = np.exp(z - z.max(axis=axis, keepdims=True))
        return (z / z.sum(axis=axis, keepdims=True)).astype(np.float32)


class ChunkedStream:
    """Batch-of-one streaming around a model that takes ``feed`` samples per call (a multiple
    of ``unit``, the samples per output frame) and returns one frame per ``unit``.

    Subclasses set ``sample_rate``, ``unit``, ``feed``, ``warmup_frames``, ``win``,
    ``left_pad``, ``num_classes``, ``window`` and ``window_s``, then call ``reset()``.
    """

    sample_rate: int
    unit: int  # samples per output frame
    feed: int  # the model takes a multiple of this many samples per call
    warmup_frames: int
    win: int  # samples of the frame an output frame is aligned with (1 for raw audio)
    left_pad: int  # samples of front-end padding before the stream
    num_classes: int
    window: int
    window_s: float

    def _start(self) -> None:
        raise NotImplementedError

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        """(len(chunk) / unit, classes) scores of the model on ``chunk``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ timing
    @property
    def frame_step_s(self) -> float:
        """Seconds between consecutive output frames."""
        return self.unit / self.sample_rate

    @property
    def delay_s(self) -> float:
        """Seconds from an output frame's time to the moment it is emitted."""
        return float(self.emit_time(0) - self.frame_time(0))

    def frame_time(self, j):
        """Time (s) of output frame(s) ``j``: centre of its aligned feature frame."""
        j = np.asarray(j, dtype=np.float64)
        return (j * self.unit - self.left_pad + self.win / 2) / self.sample_rate

    def frame_times(self, n: int | None = None, start: int = 0) -> np.ndarray:
        """Times (s) of output frames ``start .. start+n-1`` (default: all emitted so far)."""
        if n is None:
            n = self.frames_out - start
        return self.frame_time(np.arange(start, start + max(int(n), 0)))

    def emit_time(self, j):
        """Stream time (s) at which output frame(s) ``j`` come out (with steps of ``unit``)."""
        j = np.asarray(j, dtype=np.float64)
        return (j + self.warmup_frames + 1) * self.unit / self.sample_rate

    def _frames_by(self, samples: int) -> int:
        """Output frames whose time lies at or before ``samples`` into the stream."""
        return max(0, math.floor((samples + self.left_pad - self.win / 2) / self.unit) + 1)

    @property
    def pending_frames(self) -> int:
        """Output frames whose time has passed but which still wait for look-ahead."""
        return max(0, self._frames_by(self.samples_in) - self.frames_out)

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the stream: the next ``step`` starts a new one at time 0."""
        self._start()
        self._buf = np.zeros(0, np.float32)
        self._skip = self.warmup_frames  # warm-up frames still to drop
        self.samples_in = 0  # samples fed so far
        self.frames_out = 0  # output frames emitted so far
        self.flushed = False  # flush() ended this stream; reset() starts a new one
        self.last_times = np.zeros(0, np.float64)

    def step(self, samples) -> np.ndarray:
        """Feed any number of new samples (1-D float, at ``sample_rate``); returns the
        softmax scores (n_new, classes), float32, of every output frame that became
        computable (often 0 rows for small chunks). Their times are in ``last_times``."""
        if self.flushed:
            raise KwsError("this stream was flushed (it ended); call reset() to start a new one")
        x = as_samples(samples)
        self.samples_in += int(x.size)
        start = self.frames_out
        scores = np.zeros((0, self.num_classes), np.float32)
        self._buf = np.concatenate([self._buf, x]) if self._buf.size else x.copy()
        usable = self._buf.size // self.feed * self.feed
        if usable:
            chunk, self._buf = self._buf[:usable], self._buf[usable:]
            scores = self._run(chunk)
            drop = min(self._skip, scores.shape[0])
            self._skip -= drop
            scores = scores[drop:]
            self._dropped(drop)
        self.frames_out += scores.shape[0]
        self.last_times = self.frame_times(scores.shape[0], start=start)
        return scores

    def _dropped(self, n: int) -> None:
        """Hook: ``n`` warm-up frames were dropped from the last ``_run``."""

    def flush_samples(self) -> int:
        """Zero samples ``flush`` feeds: enough to emit every output frame whose time is at
        or before the end of the audio fed so far (whole model calls)."""
        last = self._frames_by(self.samples_in)
        if not self.samples_in or last <= self.frames_out:
            return 0
        need = max(0, (last + self.warmup_frames) * self.unit - self.samples_in)
        pending = self._buf.size
        return -(-(pending + need) // self.feed) * self.feed - pending if need else 0

    def flush(self) -> np.ndarray:
        """End the stream: feed ``flush_samples()`` zeros and return the scores of the
        frames they pushed out (those up to the end of the real audio, times in
        ``last_times``). ``samples_in`` keeps counting real samples only; ``step`` refuses
        more audio until ``reset()``."""
        real = self.samples_in
        scores = self.step(np.zeros(self.flush_samples(), np.float32))
        self.samples_in = real
        keep = self.last_times <= real / self.sample_rate + 1e-9
        if not keep.all():  # never report a frame past the end of the audio
            self.frames_out -= int((~keep).sum())
            scores, self.last_times = scores[keep], self.last_times[keep]
            self._kept(keep)
        self.flushed = True
        return scores

    def _kept(self, keep: np.ndarray) -> None:
        """Hook: only the ``keep`` rows of the last step's frames remain."""
