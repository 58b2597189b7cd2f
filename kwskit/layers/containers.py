"""Containers that compose streaming layers: a chain, and a sum of parallel branches."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from kwskit.layers.base import (FrameSpec, Identity, StreamModule, checked, lookahead_of,
                                stream_init_of, stream_step, stride_of, total_lookahead)


def _split(states: tuple, counts: list[int]) -> list[tuple]:
    """Cut a flat state tuple into consecutive parts of ``counts`` tensors."""
    parts, i = [], 0
    for c in counts:
        parts.append(tuple(states[i:i + c]))
        i += c
    return parts


class StreamSequential(StreamModule):
    """Layers applied one after another, in whole-sequence or streaming mode.

    Accepts modules positionally or one ``OrderedDict`` of named modules (like nn.Sequential).
    Plain modules are kept as they are (so state-dict keys stay the usual ones) after a check
    that they are frame-wise (``check_framewise`` refuses anything that mixes time).
    ``stride`` is the product of the strides; ``lookahead`` follows ``total_lookahead``.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            self.add_module(name, checked(m))

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        if isinstance(i, str):
            return self._modules[i]
        return list(self._modules.values())[i]

    @property
    def stride(self) -> int:
        s = 1
        for m in self:
            s *= stride_of(m)
        return s

    @property
    def lookahead(self) -> int:
        return total_lookahead(self)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x

    def stream_init(self, batch, spec, device=None, dtype=None):
        states, counts = [], []
        for m in self:
            st, spec = stream_init_of(m, batch, spec, device, dtype)
            states += st
            counts.append(len(st))
        self._counts = counts
        return tuple(states), spec

    def step(self, x, states):
        self._check_chunk(x)
        new = []
        for m, st in zip(self, _split(states, self._counts)):
            x, st = stream_step(m, x, st)
            new += st
        return x, tuple(new)


class Add(nn.Module):
    """``a + b`` (broadcasting) as a module, so quantizers and graph tools see every residual
    add as a node of its own (FloatFunctional-style observers, QDQ placement)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class StreamSum(StreamModule):
    """Sum of parallel branches fed the same input (residuals, BC-ResNet's broadcast add).

    Branch outputs are added with broadcasting, so a (B, C, 1, T) branch adds onto a
    (B, C, F, T) one. Every branch must have the same stride. Branches may differ in
    look-ahead: in streaming mode a branch with less warm-up than the slowest is delayed by a
    FIFO of the difference (a state tensor), so the frames added belong to the same time.
    Whole-sequence mode needs no delay: 'same'/'causal' padding keeps every branch aligned
    frame for frame.
    """

    def __init__(self, *branches: nn.Module):
        super().__init__()
        if len(branches) < 2:
            raise ValueError("StreamSum needs at least two branches")
        self.branches = nn.ModuleList(checked(b) for b in branches)
        self.add = Add()
        strides = {stride_of(b) for b in self.branches}
        if len(strides) != 1:
            raise ValueError(f"StreamSum branches have different time strides {sorted(strides)}")

    @property
    def stride(self) -> int:
        return stride_of(self.branches[0])

    @property
    def lookahead(self) -> int:
        return max(lookahead_of(b) for b in self.branches)

    def forward(self, x):
        out = None
        for b in self.branches:
            y = b(x)
            out = y if out is None else self.add(out, y)
        return out

    def stream_init(self, batch, spec, device=None, dtype=None):
        inits = [stream_init_of(b, batch, spec, device, dtype) for b in self.branches]
        warmup = max(out.warmup for _, out in inits)
        states, counts, delays = [], [], []
        for st, out in inits:
            delay = warmup - out.warmup
            fifo = (torch.zeros((batch, *out.shape, delay), device=device, dtype=dtype),) \
                if delay else ()
            states += [*st, *fifo]
            counts.append(len(st) + len(fifo))
            delays.append(delay)
        self._counts, self._delays = counts, delays
        shape = torch.broadcast_shapes(*[(1, *out.shape) for _, out in inits])[1:]
        return tuple(states), FrameSpec(tuple(shape), warmup)

    def step(self, x, states):
        total, new = None, []
        for b, st, delay in zip(self.branches, _split(states, self._counts), self._delays):
            fifo = st[-1] if delay else None
            y, st = stream_step(b, x, st[:-1] if delay else st)
            new += st
            if delay:  # FIFO of `delay` frames: the oldest go out, the newest come in
                y = torch.cat([fifo, y], dim=-1)
                new.append(y[..., y.shape[-1] - delay:])
                y = y[..., : y.shape[-1] - delay]
            total = y if total is None else self.add(total, y)
        return total, tuple(new)


class Residual(StreamSum):
    """``x + body(x)``: a StreamSum of an identity shortcut and ``body``."""

    def __init__(self, body: nn.Module):
        super().__init__(Identity(), body)
