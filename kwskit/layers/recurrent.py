"""Recurrent building blocks that stream: a GRU that carries its hidden state from chunk to
chunk, and the attention pooling that usually sits on top of it (CRNN keyword spotters).

``StreamGRU`` is a StreamModule (``forward`` / ``step``); ``AttentionPool`` has TimePool's
interface (``forward`` pools a clip, ``frames`` pools a causal sliding window per frame,
``stream_init`` / ``step`` do the same chunk by chunk) so a StreamClassifier can use it as its
``pool``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kwskit.layers.base import FrameSpec, StreamModule, warmup_counter

NEG_INF = float("-inf")


class StreamGRU(StreamModule):
    """Unidirectional (multi-layer) GRU over (batch, input_size, frames) -> (batch, hidden,
    frames).

    ``forward`` runs ``nn.GRU`` over the whole sequence from a zero state; ``step`` continues
    from the hidden state (num_layers, batch, hidden) carried in ``state``, so chunks fed one
    after another give the frames of ``forward`` on their concatenation (look-ahead 0).
    ``dropout`` acts between stacked layers in training mode only (as nn.GRU's).
    A bidirectional GRU needs the future, so it is not offered.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers, bias=bias, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.hidden_size, self.num_layers = hidden_size, num_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(x.transpose(1, 2))
        return y.transpose(1, 2)

    def stream_init(self, batch, spec, device=None, dtype=None):
        """A zero hidden state (num_layers, batch, hidden), plus a warm-up counter when the
        input has warm-up frames (they must not enter the recurrence)."""
        h = torch.zeros(self.num_layers, batch, self.hidden_size, device=device, dtype=dtype)
        self._masked = bool(spec.warmup)
        states = (h, warmup_counter(spec.warmup, device)) if spec.warmup else (h,)
        return states, FrameSpec((self.hidden_size,), spec.warmup)

    def step(self, x: torch.Tensor, states):
        if not self._masked:
            y, h = self.gru(x.transpose(1, 2), states[0])
            return y.transpose(1, 2), (h,)
        # frame by frame: a warm-up frame leaves the hidden state as it was
        h, left = states
        ys = []
        for t in range(x.shape[-1]):
            y, h_new = self.gru(x[..., t:t + 1].transpose(1, 2), h)
            h = torch.where(left > t, h, h_new)
            ys.append(y.transpose(1, 2))
        return torch.cat(ys, dim=-1), (h, torch.clamp(left - x.shape[-1], min=0))


class AttentionPool(nn.Module):
    """Attention pooling over time of (batch, channels, frames).

    Energy e_t = w^T tanh(W h_t + b) + c per frame, weights alpha = softmax over the pooled
    frames, output sum_t alpha_t h_t (Bahdanau-style additive attention with one learned query,
    as in the CRNN keyword spotters, e.g. Shan et al. 2018, arXiv:1803.10916).

    - ``forward(x)``: the whole clip -> (batch, channels).
    - ``frames(x, window)``: frame t pools frames ``[t-window+1, t]`` (fewer at the start;
      every frame so far when ``window`` is None) -> (batch, channels, frames).
    - ``stream_init(batch, spec, window)`` / ``step``: the same chunk by chunk over a fixed
      window: the state keeps the last ``window - 1`` frames and their energies (the streaming
      "max window length": the oldest frame drops out as a new one comes) and a counter that
      blanks the input's warm-up frames (zero frames, -inf energy).

    On a clip of T frames ``frames(x, T)[..., -1] == forward(x)``.
    """

    # frames per block when pooling every frame so far (memory ~ block^2 per sequence)
    block: int = 64

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or channels
        self.proj = nn.Linear(channels, hidden)
        self.score = nn.Linear(hidden, 1)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, T) attention energies (frame-wise)."""
        return self.score(torch.tanh(self.proj(x.transpose(1, 2)))).squeeze(-1)

    @staticmethod
    def _check_window(window):
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                                   or window < 1):
            raise ValueError(f"window must be a positive int or None, got {window!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.energy(x).softmax(dim=-1)
        return torch.einsum("bt,bct->bc", alpha, x)

    # ---------------------------------------------------------------- sliding window
    @staticmethod
    def _windowed(x_pad: torch.Tensor, e_pad: torch.Tensor, window: int) -> torch.Tensor:
        """Pool every complete window of the (left-padded) frames: -inf energies for frames
        before the start, so they get zero weight."""
        alpha = e_pad.unfold(-1, window, 1).softmax(dim=-1)  # (B, n, W)
        return torch.einsum("bnw,bcnw->bcn", alpha, x_pad.unfold(-1, window, 1))

    # ---------------------------------------------------------------- running softmax
    @staticmethod
    def _running(x, e, run):
        """Frame t pools every frame so far: (frames, new running state). ``run`` is
        (max energy (B,), normaliser (B,), weighted sum (B, C)) of the frames before, or None.

        Within the block, weights are exp(e_n - M_t) with M_t the running max at frame t, so
        the frame holding the max weighs exactly 1 and nothing under- or overflows."""
        n = e.shape[-1]
        peak = torch.cummax(e, dim=-1).values  # (B, n)
        if run is not None:
            peak = torch.maximum(peak, run[0].unsqueeze(-1))
        causal = torch.ones(n, n, dtype=torch.bool, device=e.device).tril()  # [t, s]: s <= t
        w = torch.exp(e.unsqueeze(1) - peak.unsqueeze(-1)).masked_fill(~causal, 0.0)  # (B,t,s)
        den = w.sum(-1)
        num = torch.einsum("bts,bcs->bct", w, x)
        if run is not None:
            scale = torch.exp(run[0].unsqueeze(-1) - peak)  # (B, n)
            den = den + run[1].unsqueeze(-1) * scale
            num = num + run[2].unsqueeze(-1) * scale.unsqueeze(1)
        return num / den.unsqueeze(1), (peak[:, -1], den[:, -1], num[..., -1])

    def _running_blocks(self, x, e, run):
        outs = []
        for i in range(0, e.shape[-1], self.block):
            y, run = self._running(x[..., i:i + self.block], e[..., i:i + self.block], run)
            outs.append(y)
        return torch.cat(outs, dim=-1), run

    def frames(self, x: torch.Tensor, window: int | None = None) -> torch.Tensor:
        self._check_window(window)
        e = self.energy(x)
        if window is None:
            return self._running_blocks(x, e, None)[0]
        return self._windowed(F.pad(x, (window - 1, 0)),
                              F.pad(e, (window - 1, 0), value=NEG_INF), window)

    def stream_init(self, batch: int, spec: FrameSpec, window: int, device=None, dtype=None):
        self._check_window(window)
        if window is None:
            raise ValueError("streaming pools over a fixed window of frames, not window=None")
        c = spec.shape[0]
        states = (torch.zeros((batch, c, window - 1), device=device, dtype=dtype),
                  torch.full((batch, window - 1), NEG_INF, device=device, dtype=dtype),
                  torch.full((1,), int(spec.warmup), dtype=torch.int64, device=device))
        return states, spec

    def step(self, x: torch.Tensor, states):
        xb, eb, left = states
        n = x.shape[-1]
        e = self.energy(x)
        keep = torch.arange(n, device=x.device) >= left  # warm-up frames weigh nothing
        x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
        e = torch.where(keep, e, torch.full((), NEG_INF, dtype=e.dtype, device=e.device))
        xp, ep = torch.cat([xb, x], dim=-1), torch.cat([eb, e], dim=-1)
        y = self._windowed(xp, ep, xb.shape[-1] + 1)
        return y, (xp[..., n:], ep[..., n:], torch.clamp(left - n, min=0))
