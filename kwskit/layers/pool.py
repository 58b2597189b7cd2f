"""Global pooling over time for classifier heads, with a causal sliding-window variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TimePool(nn.Module):
    """Average, max or last frame over the time (last) axis.

    - ``forward(x)``: pools all T frames; (..., T) -> (...). The clip-classifier head.
    - ``frames(x, window)``: per-frame pooling over a causal sliding window; (..., T) ->
      (..., T). Frame t pools frames ``[max(0, t-window+1), t]`` (fewer at the start);
      ``window=None`` pools every frame so far.
    - ``init_state`` / ``step``: the same as ``frames`` chunk by chunk. A fixed window keeps
      the last ``window - 1`` frames; ``window=None`` keeps a running sum (or max) and count.

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

    def init_state(self, batch: int, device=None, dtype=None, window: int | None = None):
        self._check_window(window)
        return {"window": window, "buf": None, "seen": 0}

    def step(self, x, state):
        window, seen, buf = state["window"], state["seen"], state["buf"]
        n = x.shape[-1]
        if self.mode == "last":
            return x, state
        if window is None:  # running sum / max and count
            if n == 0:
                return x, state
            if self.mode == "max":
                run = torch.cummax(x, dim=-1).values
                if buf is not None:
                    run = torch.maximum(run, buf.unsqueeze(-1))
            else:
                run = torch.cumsum(x, dim=-1)
                if buf is not None:
                    run = run + buf.unsqueeze(-1)
            out = run
            if self.mode == "avg":
                count = torch.arange(seen + 1, seen + n + 1, device=x.device, dtype=x.dtype)
                out = run / count
            return out, {"window": None, "buf": run[..., -1], "seen": seen + n}
        if buf is None:
            buf = x.new_full(tuple(x.shape[:-1]) + (window - 1,), self._pad_value())
        if n == 0:
            return x, {"window": window, "buf": buf, "seen": seen}
        padded = torch.cat([buf, x], dim=-1)
        out = self._windowed(padded, window, seen)
        keep = padded[..., padded.shape[-1] - (window - 1):].contiguous()
        return out, {"window": window, "buf": keep, "seen": seen + n}
