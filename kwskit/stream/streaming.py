"""Streaming inference: a trained KwsPipeline fed audio in chunks of any size.

``Streamer(pipeline).step(samples)`` returns class probabilities for every output frame that
became computable. It is a thin adapter over the pipeline's own ``init_state`` / ``step``
(see kwskit.models.pipeline): numpy in, a sample buffer that hands the pipeline whole
multiples of ``step_samples``, a batch of one, the pipeline's warm-up frames dropped, and
times. The pipeline streams the front-end too, so the input is raw audio.

The reference is ``scores_whole(pipeline, signal, window_s)``: the same numbers in one go.
Fed any chunking, the streamer returns the first ``n`` of its frames; the missing last frames
are the ones the model's look-ahead needs future audio for.

Timing (all in seconds of the input stream):

- ``frame_time(j)`` is the centre of the feature frame that output frame ``j`` is aligned
  with; for a wave-input model, of that sample. The score at that time pools the window of
  ``window_s`` seconds that ends there.
- ``emit_time(j)`` is when the frame comes out: the step that completes its look-ahead.
- ``delay_s = emit_time(j) - frame_time(j)``: the front-end's framing (the second half of a
  window) plus the model's look-ahead, rounded up to whole output frames.

The end of a finite stream (a file): the last ``delay_s`` seconds of audio are only scored
once audio after them arrives. ``flush()`` feeds exactly enough zero samples (digital
silence, what training pads short clips with) to emit every output frame whose time lies
inside the audio fed so far, so a file is scored to its last frame and a one-word file finds
its word. Those last frames equal ``scores_whole`` of the signal followed by the same zeros;
they differ (slightly) from ``scores_whole`` of the bare signal, whose layers pad their own
inputs with zeros, which no input samples reproduce. A live stream never ends and needs no
flush; ``pending_frames`` says how many frames are waiting.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from kwskit import SAMPLE_RATE
from kwskit.errors import KwsError
from kwskit.stream.chunking import ChunkedStream, as_samples, softmax


def _pipeline(pipeline: nn.Module) -> nn.Module:
    if not all(hasattr(pipeline, a) for a in ("init_state", "step", "backbone", "input_kind")):
        raise KwsError(f"{type(pipeline).__name__} is not a KwsPipeline (needs init_state, "
                       "step, backbone and input_kind)")
    pipeline.check_streamable()
    return pipeline


def _param_of(m: nn.Module) -> torch.Tensor | None:
    for t in list(m.parameters()) + list(m.buffers()):
        if t.is_floating_point():
            return t
    return None


def _num_features(pipeline, num_samples: int) -> int:
    if pipeline.input_kind == "wave":
        return num_samples
    return int(pipeline.frontend.num_frames(num_samples))


def window_frames(pipeline: nn.Module, window_s: float = 1.0,
                  sample_rate: int = SAMPLE_RATE) -> int:
    """Backbone output frames in ``window_s`` seconds: the classifier's pooling window."""
    _pipeline(pipeline)
    if not (isinstance(window_s, (int, float)) and math.isfinite(window_s) and window_s > 0):
        raise KwsError(f"window_s: must be a positive number of seconds, got {window_s!r}")
    n_feat = _num_features(pipeline, int(round(window_s * sample_rate)))
    n = int(pipeline.backbone.num_out_frames(n_feat)) if n_feat > 0 else 0
    if n < 1:
        raise KwsError(f"window_s: {window_s} s is shorter than one output frame of the model")
    return n


def _as_tensor(samples, like: torch.Tensor | None) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(as_samples(samples)))
    return x if like is None else x.to(device=like.device, dtype=like.dtype)


def logits_whole(pipeline: nn.Module, signal, window_s: float = 1.0,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Per-frame logits (frames, classes) of a whole signal, computed in one go (no state).

    ``backbone.forward_frames(features(signal), window)`` with the pooling window of
    ``window_s`` seconds: the reference the Streamer must reproduce.
    """
    _pipeline(pipeline)
    window = window_frames(pipeline, window_s, sample_rate)
    x = _as_tensor(signal, _param_of(pipeline))
    if _num_features(pipeline, x.numel()) < 1:
        return np.zeros((0, pipeline.backbone.num_classes_out()), np.float32)
    with torch.inference_mode():
        was = pipeline.training
        pipeline.eval()
        try:
            out = pipeline.backbone.forward_frames(pipeline.features(x[None]), window)
        finally:
            pipeline.train(was)
    return out[0].T.float().cpu().numpy()


def scores_whole(pipeline: nn.Module, signal, window_s: float = 1.0,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Per-frame class probabilities (frames, classes): softmax of ``logits_whole``."""
    z = torch.from_numpy(logits_whole(pipeline, signal, window_s, sample_rate))
    return torch.softmax(z.double(), dim=-1).float().numpy()


class Streamer(ChunkedStream):
    """Chunk-by-chunk inference of a trained KwsPipeline (batch of one stream).

    Args:
        pipeline: a ``KwsPipeline`` whose backbone can stream; put in eval mode.
        window_s: pooling window of the classifier in seconds (1.0 = the training clip).
        sample_rate: rate of the samples fed to ``step`` [Hz]; must be the front-end's.

    ``step(samples)`` -> (n_new, classes) probabilities; ``last_times`` holds their times,
    ``last_logits`` their logits. ``flush()`` ends a finite stream (see the module docstring,
    also for the timing).
    """

    def __init__(self, pipeline: nn.Module, window_s: float = 1.0,
                 sample_rate: int = SAMPLE_RATE):
        self.pipeline = _pipeline(pipeline)
        pipeline.eval()
        fe_rate = getattr(pipeline.frontend, "sample_rate", sample_rate)
        if pipeline.input_kind != "wave" and int(fe_rate) != int(sample_rate):
            raise KwsError(f"sample_rate: the model's front-end runs at {fe_rate} Hz, "
                           f"got {sample_rate} Hz (resample first)")
        self.backbone, self.input_kind = pipeline.backbone, pipeline.input_kind
        self.sample_rate = int(sample_rate)
        self.window_s = float(window_s)
        self.window = window_frames(pipeline, window_s, sample_rate)
        self.num_classes = int(self.backbone.num_classes_out())
        framing = pipeline.framing
        self.win = framing.win if framing is not None else 1
        self.left_pad = framing.pad_left if framing is not None else 0
        self.unit = self.feed = int(pipeline.step_samples)
        self._like = _param_of(pipeline)
        self.reset()

    @property
    def frame_stride(self) -> int:
        """Feature frames (samples for wave models) per output frame."""
        return int(self.backbone.frame_stride)

    @property
    def hop(self) -> int:
        """Samples per feature frame (1 for wave models)."""
        return int(self.pipeline.hop_samples)

    @property
    def lookahead_frames(self) -> int:
        """Future feature frames the model's layers read (the tight look-ahead)."""
        return int(self.backbone.lookahead_frames)

    def _start(self) -> None:
        dtype = self._like.dtype if self._like is not None else torch.float32
        device = self._like.device if self._like is not None else None
        self.state = self.pipeline.init_state(1, self.window, device, dtype)
        self.warmup_frames = int(self.pipeline.stream_warmup)
        self.last_logits = np.zeros((0, self.num_classes), np.float32)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y, *self.state = self.pipeline.step(_as_tensor(chunk, self._like)[None], *self.state)
        self.last_logits = y[0].T.float().cpu().numpy()
        return softmax(self.last_logits)

    def _dropped(self, n: int) -> None:
        self.last_logits = self.last_logits[n:]

    def _kept(self, keep: np.ndarray) -> None:
        self.last_logits = self.last_logits[keep]

    def step(self, samples) -> np.ndarray:
        before = self.frames_out
        scores = super().step(samples)
        if self.frames_out == before:
            self.last_logits = np.zeros((0, self.num_classes), np.float32)
        return scores

    def step_logits(self, samples) -> np.ndarray:
        """Like ``step`` but returns raw logits (n_new, classes)."""
        self.step(samples)
        return self.last_logits

    def __repr__(self) -> str:
        return (f"Streamer({getattr(self.backbone, 'model_name', type(self.backbone).__name__)}, "
                f"window={self.window} frames ({self.window_s:g} s), "
                f"frame step {self.frame_step_s * 1e3:g} ms, delay {self.delay_s * 1e3:g} ms)")
