"""Waveform-to-scores model: front-end + (SpecAugment while training) + backbone.

This is what training optimises, what a checkpoint stores and what export writes out, so the
features a model was trained on always travel with it. It runs whole clips (``forward``) and
streams raw samples (``init_state`` / ``step``, see kwskit.layers.base for the contract): the
front-end's framing is a streaming layer (``Frames``, its sample buffer is state), each frame
becomes features through the front-end's ``frame_features``, and the backbone streams the rest.
"""

from __future__ import annotations

import torch
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import FrameSpec, Frames


class KwsPipeline(nn.Module):
    """``forward(waveform (B, samples)) -> logits (B, classes)``.

    ``input_kind`` says how the backbone takes features: "2d" (B, 1, F, T), "1d" (B, F, T) or
    "wave" (B, 1, samples, no front-end).

    Streaming: ``states = init_state(batch, window)`` (a flat tuple of tensors), then
    ``logits, *states = step(audio, *states)`` with ``audio`` (B, n) where n is a multiple of
    ``step_samples``; ``logits`` is (B, classes, n / step_samples). The first
    ``stream_warmup`` logits frames of a stream are warm-up (they stand for times before it
    began); frame ``stream_warmup + j`` equals frame j of ``backbone.forward_frames`` on the
    whole signal's features.
    """

    def __init__(self, frontend: nn.Module, backbone: nn.Module, input_kind: str = "2d",
                 specaugment: nn.Module | None = None):
        super().__init__()
        if input_kind not in ("2d", "1d", "wave"):
            raise ValueError(f"input_kind must be 2d, 1d or wave, got {input_kind!r}")
        self.frontend = frontend
        self.specaugment = specaugment if specaugment is not None else nn.Identity()
        self.backbone = backbone
        self.input_kind = input_kind
        self.stream_warmup = 0
        self.framing, self.stream_note = self._framing()

    def _framing(self) -> tuple[Frames | None, str]:
        """The front-end's framing as a streaming layer, or (None, why it cannot stream)."""
        if self.input_kind == "wave":
            return None, ""
        fe = self.frontend
        if not all(hasattr(fe, a) for a in ("win_length", "hop_length", "frame_features")):
            return None, f"front-end {type(fe).__name__} has no frame-wise features"
        left = 0
        if getattr(fe, "center", False):
            if getattr(fe, "pad_mode", "constant") == "reflect":
                # the first frames mirror samples that have not arrived yet
                return None, "a centred front-end with reflect padding needs future samples " \
                             "for its first frames (use center=false or pad_mode=constant)"
            left = fe.n_fft // 2 - (fe.n_fft - fe.win_length) // 2
        return Frames(fe.win_length, fe.hop_length, left), ""

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Backbone input for a batch of waveforms (SpecAugment applies in training mode only)."""
        if self.input_kind == "wave":
            return wave.unsqueeze(1) if wave.dim() == 2 else wave
        if torch.is_autocast_enabled(wave.device.type):
            # the front-end's logarithm of small energies stays in float32 under mixed precision
            with torch.autocast(wave.device.type, enabled=False):
                return self._shape(self.specaugment(self.frontend(wave.float())))
        return self._shape(self.specaugment(self.frontend(wave)))

    def _shape(self, feats: torch.Tensor) -> torch.Tensor:
        if self.input_kind == "1d" and feats.dim() == 4:
            return feats.squeeze(1)
        if self.input_kind == "2d" and feats.dim() == 3:
            return feats.unsqueeze(1)
        return feats

    def forward(self, wave: torch.Tensor, frames_window: int | None = None) -> torch.Tensor:
        """Clip logits (B, classes); with ``frames_window``, per-frame logits (B, classes, T')
        of ``backbone.forward_frames`` over that many output frames (a detection loss goes
        through here, so a DistributedDataParallel wrapper still sees the call)."""
        if frames_window is not None:
            return self.backbone.forward_frames(self.features(wave), frames_window)
        return self.backbone(self.features(wave))

    # ---------------------------------------------------------------- streaming
    @property
    def streamable(self) -> bool:
        return bool(getattr(self.backbone, "streamable", True)) and \
            (self.input_kind == "wave" or self.framing is not None)

    def check_streamable(self) -> None:
        """KwsError saying why, when this pipeline cannot stream."""
        name = getattr(self.backbone, "model_name", type(self.backbone).__name__)
        if not getattr(self.backbone, "streamable", True):
            note = getattr(self.backbone, "stream_note", "") or "it does not support streaming"
            raise KwsError(f"{name} cannot stream: {note}")
        if self.input_kind != "wave" and self.framing is None:
            raise KwsError(f"{name} cannot stream: {self.stream_note}")

    @property
    def hop_samples(self) -> int:
        """Samples per backbone input frame (1 for raw-wave models)."""
        return 1 if self.input_kind == "wave" else int(self.frontend.hop_length)

    @property
    def step_samples(self) -> int:
        """Samples per output frame: every ``step`` takes a multiple of this many."""
        return self.hop_samples * int(self.backbone.frame_stride)

    def init_state(self, batch: int = 1, window: int = 98, device=None,
                   dtype=None) -> tuple[torch.Tensor, ...]:
        """Initial streaming states for ``batch`` streams whose classifier pools the last
        ``window`` output frames; sets ``stream_warmup``."""
        self.check_streamable()
        spec = FrameSpec((1,))
        framing = ()
        if self.framing is not None:
            framing, spec = self.framing.stream_init(batch, spec, device, dtype)
            n_feat = int(self.backbone.in_features)
            spec = FrameSpec((1, n_feat) if self.input_kind == "2d" else (n_feat,), spec.warmup)
        body, out = self.backbone.stream_init(batch, window, spec, device, dtype)
        self._n_framing = len(framing)
        self.stream_warmup = int(out.warmup)
        return tuple(framing) + tuple(body)

    def step(self, audio: torch.Tensor, *states: torch.Tensor):
        """``audio`` (B, n) new samples -> (logits (B, classes, n / step_samples), *states)."""
        x = audio[:, None, :]
        nf = self._n_framing
        framing = ()
        if self.framing is not None:
            frames, framing = self.framing.step(x, states[:nf])
            x = self._shape(self.frontend.frame_features(frames))
        y, body = self.backbone.step(x, states[nf:])
        return (y, *framing, *body)
