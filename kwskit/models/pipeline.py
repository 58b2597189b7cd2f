"""Waveform-to-scores model: front-end + (SpecAugment while training) + backbone.

This is what training optimises, what a checkpoint stores and what export writes out, so the
features a model was trained on always travel with it.
"""

from __future__ import annotations

import torch
from torch import nn


class KwsPipeline(nn.Module):
    """``forward(waveform (B, samples)) -> logits (B, classes)``.

    ``input_kind`` says how the backbone takes features: "2d" (B, 1, F, T), "1d" (B, F, T) or
    "wave" (B, 1, samples, no front-end).
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

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Backbone input for a batch of waveforms (SpecAugment applies in training mode only)."""
        if self.input_kind == "wave":
            return wave.unsqueeze(1) if wave.dim() == 2 else wave
        feats = self.specaugment(self.frontend(wave))
        if self.input_kind == "1d" and feats.dim() == 4:
            feats = feats.squeeze(1)
        return feats

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.features(wave))
