"""Lambda layer along time (Bello 2021, "LambdaNetworks: Modeling long-range interactions
without attention", ICLR 2021, arXiv:2102.08602), for (batch, channels, frames) sequences.

Instead of an attention map, every output frame n gets a small linear function (a "lambda",
a k x v matrix) that it applies to its own query:

    q_n = BN(W_q x_n)  split into h heads of k        (queries)
    K   = softmax over time of (W_k x)  (k x u per frame, normalised over the context frames)
    V   = BN(W_v x)    (v x u per frame, v = d_out / h)
    content lambda   lc     = sum_m K_m V_m^T                      (one k x v matrix)
    position lambda  lp_n   = sum_j E_j V_{n+j}^T,  j in a window of ``m`` frames
                              (the "lambda convolution": relative embeddings E of shape k x u x m)
    y_n[head] = q_n[head]^T (lc + lp_n)      -> h * v = d_out channels

The content lambda summarises a whole context in a k x v matrix, so its cost is linear in the
number of frames (no T x T map). Which frames are the context:

- ``context=None`` (Bello, and the Temporal Lambda-ResNet paper): every frame of the input.
  Frame 0 then depends on the last frame, so the layer cannot stream; ``step`` refuses.
- ``context=W``: a causal sliding window, frames ``[n-W+1, n]`` (fewer at the start: missing
  frames are masked out of the softmax, not zero-filled). Then the layer streams exactly:
  its state keeps the keys/values of the last ``past + lookahead`` frames and the queries of
  the last ``lookahead`` ones; warm-up input frames become -inf keys and zero values.

The position window follows ``padding``: "same" looks ``(m-1)//2`` frames back and
``m-1-(m-1)//2`` ahead (its ``lookahead``), "causal" looks ``m-1`` frames back only. Values
outside the sequence count as zero (zero padding of V, after its BatchNorm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers.base import FrameSpec, StreamModule, mask_warmup, warmup_counter
from kwskit.layers.conv import split_padding

NEG_INF = float("-inf")


class LambdaLayer1d(StreamModule):
    """Lambda layer over (batch, d_in, frames) -> (batch, d_out, frames), time stride 1.

    Args:
        d_in, d_out: channels in and out; ``heads`` must divide ``d_out``.
        heads: query heads h (value depth v = d_out / h).
        key_dim: query/key depth k.
        intra_depth: u, the "intra-depth" of keys and values (1 in the KWS paper).
        pos_kernel: m, frames of the position (lambda-convolution) window; 0 = no position
            lambdas (content only).
        context: content-lambda window in frames (causal), or None for the whole input.
        padding: "same" or "causal" placement of the position window.

    Parameters: W_q (d_in x hk) + BN, W_k (d_in x ku), W_v (d_in x vu) + BN, E (k x u x m);
    no biases (the BatchNorms supply them), as in Bello's reference layer.
    """

    def __init__(self, d_in: int, d_out: int, heads: int = 4, key_dim: int = 16,
                 intra_depth: int = 1, pos_kernel: int = 23, context: int | None = None,
                 padding: str = "same"):
        super().__init__()
        if heads < 1 or d_out % heads:
            raise KwsError(f"LambdaLayer1d: heads={heads} must divide d_out={d_out}")
        if context is not None and (isinstance(context, bool) or not isinstance(context, int)
                                    or context < 1):
            raise KwsError(f"LambdaLayer1d: context must be a positive number of frames or "
                           f"None, got {context!r}")
        if pos_kernel < 0 or key_dim < 1 or intra_depth < 1:
            raise KwsError("LambdaLayer1d: pos_kernel must be >= 0, key_dim and intra_depth >= 1")
        self.heads, self.k, self.u, self.v = heads, key_dim, intra_depth, d_out // heads
        self.d_out, self.m, self.context = d_out, pos_kernel, context
        self.padding_mode = padding
        self.pad_left, self.pad_right = split_padding(max(pos_kernel - 1, 0), padding)
        # frames before the current one that any part of the layer reads
        self.past = max(self.pad_left, (context or 1) - 1)
        self.queries = nn.Sequential(nn.Conv1d(d_in, key_dim * heads, 1, bias=False),
                                     nn.BatchNorm1d(key_dim * heads))
        self.keys = nn.Conv1d(d_in, key_dim * intra_depth, 1, bias=False)
        self.values = nn.Sequential(nn.Conv1d(d_in, self.v * intra_depth, 1, bias=False),
                                    nn.BatchNorm1d(self.v * intra_depth))
        if pos_kernel:
            # N(0, 1) like the KWS paper's code (Bello's text leaves the scale open)
            self.embedding = nn.Parameter(torch.randn(key_dim, intra_depth, 1, pos_kernel))
        else:
            self.register_parameter("embedding", None)

    # ---------------------------------------------------------------- timing
    @property
    def lookahead(self) -> int:
        return self.pad_right

    @property
    def streamable(self) -> bool:
        return self.context is not None

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, k={self.k}, u={self.u}, v={self.v}, m={self.m}, "
                f"context={self.context}, padding={self.padding_mode!r}")

    # ---------------------------------------------------------------- pieces
    def _project(self, x: torch.Tensor):
        """Frame-wise projections: q (B, h, k, T), keys (B, k, u, T), values (B, v, u, T)."""
        b, _, t = x.shape
        q = self.queries(x).view(b, self.heads, self.k, t)
        k = self.keys(x).view(b, self.k, self.u, t)
        v = self.values(x).view(b, self.v, self.u, t)
        return q, k, v

    def _position(self, q: torch.Tensor, v_pad: torch.Tensor) -> torch.Tensor:
        """q (B, h, k, n) applied to position lambdas of V padded to n + m - 1 frames."""
        if self.embedding is None:
            return 0.0
        b = v_pad.shape[0]
        # (B, u, v, L) conv (k, u, 1, m) -> (B, k, v, n): lambda_p for every frame
        lam_p = F.conv2d(v_pad.transpose(1, 2), self.embedding)
        return torch.einsum("bhkn,bkvn->bhvn", q, lam_p).reshape(b, self.d_out, -1)

    def _windowed(self, q, k_pad, v_pad) -> torch.Tensor:
        """Output for the n frames of ``q`` given keys/values padded to ``past + n + lookahead``
        frames (frame i of q sits at index ``past + i``); keys padded with -inf, values with 0.
        Forward and step both come here, so both compute the very same windows."""
        n, w, p = q.shape[-1], self.context, self.past
        b = q.shape[0]
        kc = k_pad[..., p - w + 1: p + n].unfold(-1, w, 1)  # (B, k, u, n, W)
        vc = v_pad[..., p - w + 1: p + n].unfold(-1, w, 1)  # (B, v, u, n, W)
        lam_c = torch.einsum("bkunw,bvunw->bnkv", kc.softmax(dim=-1), vc)
        y = torch.einsum("bhkn,bnkv->bhvn", q, lam_c).reshape(b, self.d_out, n)
        lo = p - self.pad_left
        return y + self._position(q, v_pad[..., lo: lo + n + self.m - 1])

    # ---------------------------------------------------------------- whole sequence
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(x)
        if self.context is not None:
            pads = (self.past, self.pad_right)
            return self._windowed(q, F.pad(k, pads, value=NEG_INF), F.pad(v, pads))
        b, t = x.shape[0], x.shape[-1]
        lam_c = torch.einsum("bkum,bvum->bkv", k.softmax(dim=-1), v)  # over all frames
        y = torch.einsum("bhkn,bkv->bhvn", q, lam_c).reshape(b, self.d_out, t)
        return y + self._position(q, F.pad(v, (self.pad_left, self.pad_right)))

    # ---------------------------------------------------------------- streaming
    def stream_init(self, batch, spec, device=None, dtype=None):
        if self.context is None:
            raise KwsError("LambdaLayer1d with context=None summarises the whole input; "
                           "it cannot stream (build it with context=<frames>)")
        keep, r = self.past + self.pad_right, self.pad_right
        states = [torch.full((batch, self.k, self.u, keep), NEG_INF, device=device, dtype=dtype),
                  torch.zeros((batch, self.v, self.u, keep), device=device, dtype=dtype)]
        if r:
            states.append(torch.zeros((batch, self.heads, self.k, r), device=device, dtype=dtype))
        if spec.warmup:
            states.append(warmup_counter(spec.warmup, device))
        self._plan = (bool(r), bool(spec.warmup))
        return tuple(states), FrameSpec((self.d_out,), spec.warmup + r)

    def step(self, x: torch.Tensor, states):
        """Output i of a step is centred on key/value frame ``past + i`` of the buffer plus
        the new frames; its query comes ``lookahead`` frames late, hence the query buffer."""
        has_q, masked = self._plan
        k_buf, v_buf = states[0], states[1]
        n = x.shape[-1]
        q, k, v = self._project(x)
        new_left = ()
        if masked:
            k, left = mask_warmup(k, states[-1], NEG_INF)
            v, _ = mask_warmup(v, states[-1], 0.0)
            new_left = (left,)
        k_all, v_all = torch.cat([k_buf, k], -1), torch.cat([v_buf, v], -1)
        q_all = torch.cat([states[2], q], -1) if has_q else q
        y = self._windowed(q_all[..., :n], k_all, v_all)
        new = [k_all[..., n:], v_all[..., n:]]
        if has_q:
            new.append(q_all[..., n:])
        return y, tuple(new) + new_left
