"""Streaming inference: a trained KwsPipeline fed audio in chunks of any size.

``Streamer(pipeline).step(samples)`` returns class probabilities for every output frame that
became computable. It streams the front-end too: a small sample buffer holds what the next
feature frame still needs, and frames come out exactly as ``frontend(whole_signal)`` would
frame them. The frames go to ``backbone.step`` (per-layer ring buffers, see kwskit.layers),
whose classifier pools a causal sliding window of ``window_s`` seconds.

The reference is ``scores_whole(pipeline, signal, window_s)``: the same numbers in one go.
Fed any chunking, the streamer returns the first ``n`` of its frames, where the missing last
frames are the ones the model's look-ahead needs future audio for.

Timing (all in seconds of the input stream):

- ``frame_time(j)`` is the centre of the feature frame that output frame ``j`` is aligned
  with (``j * frame_stride``); for a wave-input model, of that sample. The score at that time
  pools the window of ``window_s`` seconds that ends there.
- ``emit_time(j)`` is when the frame can be computed: its aligned frame plus the model's
  ``lookahead_frames`` have fully arrived.
- ``delay_s = emit_time(j) - frame_time(j)``: the front-end's framing (the second half of a
  window) plus ``lookahead_frames * hop``. Causal models only pay the framing part.

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

import copy
import math

import numpy as np
import torch
from torch import nn

from kwskit import SAMPLE_RATE
from kwskit.errors import KwsError


def _framing(frontend: nn.Module, input_kind: str) -> tuple[int, int, bool, int, str]:
    """(win, hop, center, left_pad, pad_mode) of the front-end, in samples.

    ``left_pad`` is the padding a ``center=True`` front-end puts before the first sample
    (after dropping the zero-weight part of its n_fft frame, see kwskit.features.frontend).
    """
    if input_kind == "wave":
        return 1, 1, False, 0, "constant"
    missing = [a for a in ("win_length", "hop_length") if not hasattr(frontend, a)]
    if missing:
        raise KwsError(f"front-end {type(frontend).__name__} does not declare its framing "
                       f"({', '.join(missing)}); it cannot stream")
    win, hop = int(frontend.win_length), int(frontend.hop_length)
    center = bool(getattr(frontend, "center", False))
    left = 0
    if center:
        n_fft = int(getattr(frontend, "n_fft", win))
        left = n_fft // 2 - (n_fft - win) // 2
    return win, hop, center, left, str(getattr(frontend, "pad_mode", "constant"))


def _module_of(pipeline: nn.Module):
    frontend = getattr(pipeline, "frontend", None)
    backbone = getattr(pipeline, "backbone", None)
    kind = getattr(pipeline, "input_kind", None)
    if backbone is None or kind not in ("2d", "1d", "wave"):
        raise KwsError(f"{type(pipeline).__name__} is not a KwsPipeline (needs frontend, "
                       "backbone and input_kind)")
    if not getattr(backbone, "streamable", True):
        name = getattr(backbone, "model_name", type(backbone).__name__)
        note = getattr(backbone, "stream_note", "") or "the model does not support streaming"
        raise KwsError(f"{name} cannot stream: {note}")
    for attr in ("init_state", "step", "forward_frames", "num_out_frames"):
        if not hasattr(backbone, attr):
            raise KwsError(f"{type(backbone).__name__} lacks {attr}(); only StreamClassifier "
                           "backbones can stream")
    return frontend, backbone, kind


def _param_of(m: nn.Module) -> torch.Tensor | None:
    for t in list(m.parameters()) + list(m.buffers()):
        if t.is_floating_point():
            return t
    return None


def _num_features(frontend, kind: str, num_samples: int) -> int:
    if kind == "wave":
        return num_samples
    if hasattr(frontend, "num_frames"):
        return int(frontend.num_frames(num_samples))
    win, hop, center, left, _ = _framing(frontend, kind)
    n = num_samples + (2 * left if center else 0)
    return 0 if n < win else 1 + (n - win) // hop


def window_frames(pipeline: nn.Module, window_s: float = 1.0,
                  sample_rate: int = SAMPLE_RATE) -> int:
    """Backbone output frames in ``window_s`` seconds: the classifier's pooling window."""
    frontend, backbone, kind = _module_of(pipeline)
    if not (isinstance(window_s, (int, float)) and math.isfinite(window_s) and window_s > 0):
        raise KwsError(f"window_s: must be a positive number of seconds, got {window_s!r}")
    n_feat = _num_features(frontend, kind, int(round(window_s * sample_rate)))
    n = int(backbone.num_out_frames(n_feat)) if n_feat > 0 else 0
    if n < 1:
        raise KwsError(f"window_s: {window_s} s is shorter than one output frame of the model")
    return n


def _features(pipeline, wave: torch.Tensor, frontend: nn.Module | None = None) -> torch.Tensor:
    """Backbone input for a (1, samples) waveform (the pipeline's own reshaping)."""
    if pipeline.input_kind == "wave":
        return wave
    feats = (frontend or pipeline.frontend)(wave)
    if pipeline.input_kind == "1d" and feats.dim() == 4:
        feats = feats.squeeze(1)
    return feats


def _as_tensor(samples, like: torch.Tensor | None) -> torch.Tensor:
    if isinstance(samples, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(samples))
    elif torch.is_tensor(samples):
        x = samples.detach()
    else:
        raise KwsError(f"samples: expected a 1-D numpy array or tensor, got "
                       f"{type(samples).__name__}")
    if x.dim() != 1:
        raise KwsError(f"samples: expected a 1-D array of mono samples, got shape "
                       f"{tuple(x.shape)}")
    if not (x.is_floating_point() or x.numel() == 0):
        raise KwsError(f"samples: expected float samples in [-1, 1], got dtype {x.dtype}")
    if like is not None:
        x = x.to(device=like.device, dtype=like.dtype)
    return x.float() if like is None else x


def logits_whole(pipeline: nn.Module, signal, window_s: float = 1.0,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Per-frame logits (frames, classes) of a whole signal, computed in one go (no state).

    ``backbone.forward_frames(features(signal), window)`` with the pooling window of
    ``window_s`` seconds: the reference the Streamer must reproduce.
    """
    frontend, backbone, kind = _module_of(pipeline)
    window = window_frames(pipeline, window_s, sample_rate)
    x = _as_tensor(signal, _param_of(pipeline))
    classes = _num_classes(backbone)
    if _num_features(frontend, kind, x.numel()) < 1:
        return np.zeros((0, classes), np.float32)
    with torch.inference_mode():
        was = pipeline.training
        pipeline.eval()
        try:
            out = backbone.forward_frames(_features(pipeline, x[None]), window)
        finally:
            pipeline.train(was)
    return out[0].T.float().cpu().numpy()


def scores_whole(pipeline: nn.Module, signal, window_s: float = 1.0,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Per-frame class probabilities (frames, classes): softmax of ``logits_whole``."""
    z = torch.from_numpy(logits_whole(pipeline, signal, window_s, sample_rate))
    return torch.softmax(z.double(), dim=-1).float().numpy()


def _num_classes(backbone) -> int:
    n = getattr(backbone, "num_classes", None)
    if n:
        return int(n)
    head = getattr(backbone, "head", None)
    lin = [m for m in head.modules() if isinstance(m, nn.Linear)] if head is not None else []
    return int(lin[-1].out_features) if lin else 0


class Streamer:
    """Chunk-by-chunk inference of a trained KwsPipeline (batch of one stream).

    Args:
        pipeline: a ``KwsPipeline`` (front-end + StreamClassifier backbone); put in eval mode.
        window_s: pooling window of the classifier in seconds (1.0 = the training clip).
        sample_rate: rate of the samples fed to ``step`` [Hz]; must be the front-end's.

    ``step(samples)`` -> (n_new, classes) probabilities; ``last_times`` holds their times.
    ``flush()`` ends a finite stream (see the module docstring, also for the timing).
    """

    def __init__(self, pipeline: nn.Module, window_s: float = 1.0,
                 sample_rate: int = SAMPLE_RATE):
        frontend, backbone, kind = _module_of(pipeline)
        pipeline.eval()
        fe_rate = getattr(frontend, "sample_rate", sample_rate)
        if kind != "wave" and int(fe_rate) != int(sample_rate):
            raise KwsError(f"sample_rate: the model's front-end runs at {fe_rate} Hz, "
                           f"got {sample_rate} Hz (resample first)")
        self.pipeline, self.backbone, self.input_kind = pipeline, backbone, kind
        self.sample_rate = int(sample_rate)
        self.window_s = float(window_s)
        self.window = window_frames(pipeline, window_s, sample_rate)
        self.num_classes = _num_classes(backbone)
        self.win, self.hop, self.center, self.left_pad, pad_mode = _framing(frontend, kind)
        self._pad_mode = "reflect" if pad_mode == "reflect" else "constant"
        # The stream frames the padded signal itself, so the front-end must not pad again.
        self._frontend = frontend
        if self.center:
            self._frontend = copy.deepcopy(frontend)
            self._frontend.center = False
        self._like = _param_of(pipeline)
        self.reset()

    # ------------------------------------------------------------------ timing
    @property
    def frame_stride(self) -> int:
        """Feature frames (samples for wave models) per output frame."""
        return int(self.backbone.frame_stride)

    @property
    def lookahead_frames(self) -> int:
        """Future feature frames an output frame waits for."""
        return int(self.backbone.lookahead_frames)

    @property
    def frame_step_s(self) -> float:
        """Seconds between consecutive output frames."""
        return self.frame_stride * self.hop / self.sample_rate

    @property
    def delay_s(self) -> float:
        """Seconds from an output frame's time to the moment it is emitted (see module doc)."""
        return (self.win / 2 + self.lookahead_frames * self.hop) / self.sample_rate

    def frame_time(self, j):
        """Time (s) of output frame(s) ``j``: centre of its aligned feature frame."""
        j = np.asarray(j, dtype=np.float64)
        start = j * self.frame_stride * self.hop - self.left_pad
        return (start + self.win / 2) / self.sample_rate

    def frame_times(self, n: int | None = None, start: int = 0) -> np.ndarray:
        """Times (s) of output frames ``start .. start+n-1`` (default: all emitted so far)."""
        if n is None:
            n = self.frames_out - start
        return self.frame_time(np.arange(start, start + max(int(n), 0)))

    def emit_time(self, j):
        """Stream time (s) at which output frame(s) ``j`` become computable."""
        return self.frame_time(j) + self.delay_s

    def flush_samples(self) -> int:
        """Zero samples ``flush`` feeds: enough to emit every output frame whose time is at
        or before the end of the audio fed so far (at most ``delay_s`` worth)."""
        if not self.samples_in:
            return 0
        # frame_time(j) <= end  <=>  j * stride * hop <= samples_in + left_pad - win / 2
        last = math.floor((self.samples_in + self.left_pad - self.win / 2)
                          / (self.frame_stride * self.hop))
        if last < self.frames_out:
            return 0
        need = float(self.emit_time(last)) * self.sample_rate - self.samples_in
        return max(0, math.ceil(need - 1e-6))

    @property
    def pending_frames(self) -> int:
        """Output frames whose audio has started but which still wait for look-ahead."""
        if not self.feats_in:
            return 0
        return max(0, int(self.backbone.num_out_frames(self.feats_in)) - self.frames_out)

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the stream: the next ``step`` starts a new one at time 0."""
        self.state = self.backbone.init_state(1, self.window)
        dtype = self._like.dtype if self._like is not None else torch.float32
        device = self._like.device if self._like is not None else None
        self._buf = torch.zeros(0, dtype=dtype, device=device)
        self._padded = not (self.center and self.left_pad > 0)
        self.samples_in = 0  # samples fed so far
        self.feats_in = 0  # feature frames (samples for wave models) given to the backbone
        self.frames_out = 0  # output frames emitted so far
        self.flushed = False  # flush() ended this stream; reset() starts a new one
        self.last_times = np.zeros(0, np.float64)
        self.last_logits = np.zeros((0, self.num_classes), np.float32)

    def _pad_start(self) -> None:
        """center=True: put the front-end's left padding before the first samples, as soon
        as enough of them arrived ('reflect' mirrors samples 1..pad)."""
        need = self.left_pad + 1 if self._pad_mode == "reflect" else 0
        if self._padded or self._buf.numel() < need:
            return
        if self._pad_mode == "reflect":
            head = self._buf[1 : self.left_pad + 1].flip(0)
        else:
            head = self._buf.new_zeros(self.left_pad)
        self._buf = torch.cat([head, self._buf])
        self._padded = True

    def _new_features(self, x: torch.Tensor) -> torch.Tensor | None:
        """Append samples; return the backbone input for every feature frame now complete."""
        self._buf = torch.cat([self._buf, x]) if self._buf.numel() else x.clone()
        if self.input_kind == "wave":
            out, self._buf = self._buf, self._buf[:0]
            return out[None] if out.numel() else None
        self._pad_start()
        if not self._padded or self._buf.numel() < self.win:
            return None
        n = (self._buf.numel() - self.win) // self.hop + 1
        used = (n - 1) * self.hop + self.win
        feats = _features(self.pipeline, self._buf[:used][None], self._frontend)
        # keep the part later frames share (win - hop samples) plus the remainder
        self._buf = self._buf[n * self.hop:].clone()
        return feats

    def step_logits(self, samples) -> np.ndarray:
        """Like ``step`` but returns raw logits (n_new, classes)."""
        if self.flushed:
            raise KwsError("this stream was flushed (it ended); call reset() to start a new one")
        x = _as_tensor(samples, self._like)
        self.samples_in += int(x.numel())
        times_from = self.frames_out
        logits = np.zeros((0, self.num_classes), np.float32)
        if x.numel():
            with torch.inference_mode():
                feats = self._new_features(x)
                if feats is not None:
                    self.feats_in += int(feats.shape[-1])
                    y, self.state = self.backbone.step(feats, self.state)
                    logits = y[0].T.float().cpu().numpy()
        self.frames_out += logits.shape[0]
        self.last_times = self.frame_times(logits.shape[0], start=times_from)
        self.last_logits = logits
        return logits

    def step(self, samples) -> np.ndarray:
        """Feed any number of new samples (1-D float, at ``sample_rate``); returns the
        softmax scores (n_new, classes), float32, of every output frame that became
        computable (often 0 rows for small chunks). Their times are in ``last_times``."""
        logits = self.step_logits(samples)
        if not logits.shape[0]:
            return logits
        return torch.softmax(torch.from_numpy(logits).double(), -1).float().numpy()

    def flush(self) -> np.ndarray:
        """End the stream: feed ``flush_samples()`` zeros and return the scores of the
        frames they pushed out (those up to the end of the real audio, times in
        ``last_times``). ``samples_in`` keeps counting real samples only; ``step`` refuses
        more audio until ``reset()``."""
        real, pad = self.samples_in, self.flush_samples()
        scores = self.step(np.zeros(pad, np.float32))
        self.samples_in = real
        keep = self.last_times <= real / self.sample_rate + 1e-9
        if not keep.all():  # rounding: never report a frame past the end of the audio
            self.frames_out -= int((~keep).sum())
            scores, self.last_times = scores[keep], self.last_times[keep]
            self.last_logits = self.last_logits[keep]
        self.flushed = True
        return scores

    def __repr__(self) -> str:
        return (f"Streamer({getattr(self.backbone, 'model_name', type(self.backbone).__name__)}, "
                f"window={self.window} frames ({self.window_s:g} s), "
                f"frame step {self.frame_step_s * 1e3:g} ms, delay {self.delay_s * 1e3:g} ms)")
