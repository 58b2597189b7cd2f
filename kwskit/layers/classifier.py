"""The model API every kwskit backbone offers: clip logits, per-frame logits, streaming.

A ``StreamClassifier`` is ``body`` (a StreamModule mapping features to (B, C, T') frames),
a ``TimePool`` over time, and ``head`` (a module on (..., C) vectors, e.g. Dropout + Linear)
applied after pooling -- to the one pooled vector of a clip, or to every pooled frame.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers.base import FrameSpec, StreamModule
from kwskit.layers.pool import TimePool


class StreamClassifier(nn.Module):
    """Backbone base class: ``forward``, ``forward_frames``, ``init_state``/``step``.

    Args:
        body: StreamModule; (B, 1, F, T) or (B, F, T) features -> (B, C, T') frames.
        head: module on the last axis of (..., C) -> (..., num_classes); must not mix frames.
        in_features: F, the number of mel / MFCC bins the model expects (1 for "wave").
        input_kind: "2d" for (B, 1, F, T) input, "1d" for (B, F, T), "wave" for raw audio
            (B, samples), which the body receives as (B, 1, samples).
        pool: "avg", "max" or "last" pooling over time (see TimePool).

    Timing (input feature frames): output frame j of the body is aligned with input frame
    ``j * frame_stride`` and computable once input frame ``j * frame_stride +
    lookahead_frames`` has arrived.
    """

    streamable: bool = True
    stream_note: str = ""

    def __init__(self, body: StreamModule, head: nn.Module, in_features: int,
                 input_kind: str = "2d", pool: str = "avg"):
        super().__init__()
        if input_kind not in ("2d", "1d", "wave"):
            raise ValueError(f"input_kind must be '2d', '1d' or 'wave', got {input_kind!r}")
        self.body = body
        self.pool = TimePool(pool)
        self.head = head
        self.in_features = int(in_features)
        self.input_kind = input_kind
        self.model_name = type(self).__name__  # the registry sets the registered name

    # ---------------------------------------------------------------- timing
    @property
    def lookahead_frames(self) -> int:
        """Future input frames the model needs before it can emit a frame (its delay)."""
        return self.body.lookahead

    @property
    def frame_stride(self) -> int:
        """Input frames per output frame."""
        return self.body.stride

    def num_out_frames(self, num_in_frames: int) -> int:
        """Body output frames for ``num_in_frames`` input frames ('same'/'causal' padding)."""
        return math.ceil(num_in_frames / self.frame_stride)

    # ---------------------------------------------------------------- checks
    def _check(self, x: torch.Tensor, min_frames: int = 1) -> None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():  # fixed when exporting
            return
        if self.input_kind == "2d":
            ok = x.dim() == 4 and x.shape[1] == 1 and x.shape[2] == self.in_features
            want = f"(batch, 1, {self.in_features}, frames)"
        elif self.input_kind == "wave":
            # (B, S) from a user, (B, 1, S) from KwsPipeline: both are raw audio
            ok = x.dim() == 2 or (x.dim() == 3 and x.shape[1] == 1)
            want = "(batch, samples) or (batch, 1, samples)"
        else:
            ok = x.dim() == 3 and x.shape[1] == self.in_features
            want = f"(batch, {self.in_features}, frames)"
        if not ok:
            raise KwsError(f"{self.model_name}: expected features shaped {want}, got "
                           f"{tuple(x.shape)} (check the front-end's n_mels / n_mfcc)")
        if x.shape[-1] < min_frames:
            raise KwsError(f"{self.model_name}: needs at least {min_frames} frame(s), "
                           f"got {x.shape[-1]}")

    def _body_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if self.input_kind == "wave" and x.dim() == 2 else x

    def _apply_head(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, classes, T), the head applied to every frame."""
        return self.head(frames.movedim(-1, 1)).movedim(1, -1)

    # ---------------------------------------------------------------- whole input
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clip logits (B, num_classes) from features of a whole clip."""
        self._check(x)
        return self.head(self.pool(self.body(self._body_input(x))))

    def forward_frames(self, x: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """Per-frame logits (B, num_classes, T') over a long input.

        Frame t pools the body's last ``window`` frames (a causal sliding window; all frames
        so far when None). On a clip, ``forward_frames(x, T')[..., -1] == forward(x)``.
        """
        self._check(x)
        return self._apply_head(self.pool.frames(self.body(self._body_input(x)), window))

    # ---------------------------------------------------------------- streaming
    def stream_init(self, batch: int, window: int, spec: FrameSpec | None = None, device=None,
                    dtype=None) -> tuple[tuple, FrameSpec]:
        """States for ``batch`` streams pooling over ``window`` body frames, for input frames
        of ``spec`` (default: this model's features, no warm-up). Returns (states, spec of
        the logits frames): ``spec.warmup`` leading logits frames are warm-up."""
        if not self.streamable:
            raise KwsError(f"{self.model_name} cannot stream: {self.stream_note}")
        if spec is None:
            spec = FrameSpec({"2d": (1, self.in_features), "1d": (self.in_features,),
                              "wave": (1,)}[self.input_kind])
        body, spec = self.body.stream_init(batch, spec, device, dtype)
        pool, spec = self.pool.stream_init(batch, spec, window, device, dtype)
        self._n_body = len(body)
        return tuple(body) + tuple(pool), FrameSpec((self.num_classes_out(),), spec.warmup)

    def num_classes_out(self) -> int:
        lin = [m for m in self.head.modules() if isinstance(m, nn.Linear)]
        return int(lin[-1].out_features) if lin else 0

    def step(self, x: torch.Tensor, states: tuple):
        """Feed new feature frames (a multiple of ``frame_stride``); returns (logits
        (B, classes, n / frame_stride), states). See kwskit.layers.base for warm-up."""
        self._check(x)
        nb = self._n_body
        h, body = self.body.step(self._body_input(x), tuple(states[:nb]))
        h, pool = self.pool.step(h, tuple(states[nb:]))
        return self._apply_head(h), tuple(body) + tuple(pool)
