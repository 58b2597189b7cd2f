"""Global pooling over time for classifier heads, with a causal sliding-window variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kwskit.layers.base import FrameSpec


class TimePool(nn.Module):
    """Average, max or last frame over the time (last) axis.

    - ``forward(x)``: pools all T frames; (..., T) -> (...). The clip-classifier head.
    - ``frames(x, window)``: per-frame pooling over a causal sliding window; (..., T) ->
      (..., T). Frame t pools frames ``[max(0, t-window+1), t]`` (fewer at the start);
      ``window=None`` pools every frame so far.
    - ``stream_init`` / ``step``: the same as ``frames`` chunk by chunk, for a fixed window:
      the state is the last ``window - 1`` frames and a counter of the frames seen (for the
      average's divisor at the start; it also blanks the input's warm-up frames).

    On a clip of T frames, ``frames(x, T)[..., -1]`` equals ``forward(x)``. Mode "last" (for
    recurrent bodies whose last frame already summarises the past) ignores the window.
    """

    def __init__(self, mode: str = "avg"):
        super().__init__()
        if mode not in ("avg", "max", "last"):
            raise ValueError(f"TimePool mode must be 'avg', 'max' or 'last', got {mode!r}")
        self.mode = mode

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    @staticmethod
    def _check_window(window):
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be a positive int or None, got {window!r}")

    def forward(self, x):
        if self.mode == "last":
            return x[..., -1]
        return x.mean(dim=-1) if self.mode == "avg" else x.amax(dim=-1)

    def _pad_value(self) -> float:
        return 0.0 if self.mode == "avg" else float("-inf")

    def _windowed(self, padded: torch.Tensor, window: int, seen: int) -> torch.Tensor:
        """Pool every complete ``window`` of ``padded`` (left padding already included);
        ``seen`` = real frames before the first output, for the average's divisor."""
        win = padded.unfold(-1, window, 1)
        if self.mode == "max":
            return win.amax(dim=-1)
        n = win.shape[-2]
        count = torch.arange(seen + 1, seen + n + 1, device=padded.device).clamp(max=window)
        return win.sum(dim=-1) / count.to(padded.dtype)

    def frames(self, x: torch.Tensor, window: int | None = None) -> torch.Tensor:
        self._check_window(window)
        if self.mode == "last":
            return x
        if window is None:
            if self.mode == "max":
                return torch.cummax(x, dim=-1).values
            count = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
            return torch.cumsum(x, dim=-1) / count
        return self._windowed(F.pad(x, (window - 1, 0), value=self._pad_value()), window, 0)

    def stream_init(self, batch: int, spec: FrameSpec, window: int, device=None, dtype=None):
        """States (last window-1 frames, frames seen so far counted from -warmup, capped at
        the window) and the output spec (same shape, same warm-up)."""
        self._check_window(window)
        if window is None:
            raise ValueError("streaming pools over a fixed window of frames, not window=None")
        if self.mode == "last":
            return (), spec
        buf = torch.full((batch, *spec.shape, window - 1), self._pad_value(), device=device,
                         dtype=dtype)
        seen = torch.full((1,), -int(spec.warmup), dtype=torch.int64, device=device)
        return (buf, seen), spec

    def step(self, x, states):
        if self.mode == "last":
            return x, states
        buf, seen = states
        window = buf.shape[-1] + 1
        n = x.shape[-1]
        pos = seen + torch.arange(n, device=x.device)  # each new frame's index in the stream
        x = torch.where(pos >= 0, x, torch.full((), self._pad_value(), dtype=x.dtype,
                                                device=x.device))
        padded = torch.cat([buf, x], dim=-1)
        win = padded.unfold(-1, window, 1)
        if self.mode == "max":
            out = win.amax(dim=-1)
        else:
            out = win.sum(dim=-1) / torch.clamp(pos + 1, 1, window).to(x.dtype)
        return out, (padded[..., n:], torch.clamp(seen + n, max=window))
