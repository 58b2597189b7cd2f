"""Recurrent building blocks that stream: a GRU that carries its hidden state from chunk to
chunk, and the attention pooling that usually sits on top of it (CRNN keyword spotters).

``StreamGRU`` is a StreamModule (``forward`` / ``step``); ``AttentionPool`` has TimePool's
interface (``forward`` pools a clip, ``frames`` pools a causal sliding window per frame,
``init_state`` / ``step`` do the same chunk by chunk) so a StreamClassifier can use it as its
``pool``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kwskit.layers.base import StreamModule

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

    def init_state(self, batch: int, device=None, dtype=None):
        """A zero hidden state; None (zeros made on the first chunk's device/dtype) when
        device and dtype are not given."""
        if device is None and dtype is None:
            return None
        return torch.zeros(self.num_layers, batch, self.hidden_size, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state):
        if x.shape[-1] == 0:
            return x.new_zeros((x.shape[0], self.hidden_size, 0)), state
        y, h = self.gru(x.transpose(1, 2), state)
        return y.transpose(1, 2), h


class AttentionPool(nn.Module):
    """Attention pooling over time of (batch, channels, frames).

    Energy e_t = w^T tanh(W h_t + b) + c per frame, weights alpha = softmax over the pooled
    frames, output sum_t alpha_t h_t (Bahdanau-style additive attention with one learned query,
    as in the CRNN keyword spotters, e.g. Shan et al. 2018, arXiv:1803.10916).

    - ``forward(x)``: the whole clip -> (batch, channels).
    - ``frames(x, window)``: frame t pools frames ``[t-window+1, t]`` (fewer at the start;
      every frame so far when ``window`` is None) -> (batch, channels, frames).
    - ``init_state(batch, window=...)`` / ``step``: the same chunk by chunk. A fixed window
      keeps the last ``window - 1`` frames and their energies (the streaming "max window
      length": the oldest frame drops out as a new one comes); ``window=None`` keeps a running
      softmax (max energy, normaliser, weighted sum).

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

    def init_state(self, batch: int, device=None, dtype=None, window: int | None = None):
        self._check_window(window)
        return {"window": window, "buf": None}

    def step(self, x: torch.Tensor, state):
        window, buf = state["window"], state["buf"]
        if x.shape[-1] == 0:
            return x, state
        e = self.energy(x)
        if window is None:
            y, run = self._running_blocks(x, e, buf)
            return y, {"window": None, "buf": run}
        if buf is None:  # nothing before the stream: zero frames with -inf energy
            b, c = x.shape[0], x.shape[1]
            buf = (x.new_zeros((b, c, window - 1)), e.new_full((b, window - 1), NEG_INF))
        xp, ep = torch.cat([buf[0], x], dim=-1), torch.cat([buf[1], e], dim=-1)
        y = self._windowed(xp, ep, window)
        keep = xp.shape[-1] - (window - 1)
        return y, {"window": window,
                   "buf": (xp[..., keep:].contiguous(), ep[..., keep:].contiguous())}
