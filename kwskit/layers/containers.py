"""Containers that compose streaming layers: a chain, and a sum of parallel branches."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from kwskit.layers.base import (Identity, StreamModule, checked, init_state_of, lookahead_of,
                                stream_step, stride_of, total_lookahead)


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

    def init_state(self, batch: int, device=None, dtype=None):
        return [init_state_of(m, batch, device, dtype) for m in self]

    def step(self, x, state):
        new_state = []
        for m, s in zip(self, state):
            x, s = stream_step(m, x, s)
            new_state.append(s)
        return x, new_state


class StreamSum(StreamModule):
    """Sum of parallel branches fed the same input (residuals, BC-ResNet's broadcast add).

    Branch outputs are added with broadcasting, so a (B, C, 1, T) branch adds onto a
    (B, C, F, T) one. Every branch must have the same stride. Branches may differ in
    look-ahead: in streaming mode the sum keeps each branch's frames that arrived early in a
    pending queue until every branch has produced them -- which is exactly a ``Delay`` of the
    look-ahead difference on the faster branch, and also works when that difference is not a
    multiple of the stride. Whole-sequence mode needs no delay: 'same'/'causal' padding keeps
    every branch aligned frame for frame.
    """

    def __init__(self, *branches: nn.Module):
        super().__init__()
        if len(branches) < 2:
            raise ValueError("StreamSum needs at least two branches")
        self.branches = nn.ModuleList(checked(b) for b in branches)
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
            out = y if out is None else out + y
        return out

    def init_state(self, batch: int, device=None, dtype=None):
        return {"branches": [init_state_of(b, batch, device, dtype) for b in self.branches],
                "pending": [None] * len(self.branches)}

    def step(self, x, state):
        outs, branch_states = [], []
        for b, s, pend in zip(self.branches, state["branches"], state["pending"]):
            y, s = stream_step(b, x, s)
            branch_states.append(s)
            outs.append(y if pend is None else torch.cat([pend, y], dim=-1))
        n = min(y.shape[-1] for y in outs)
        total = None
        for y in outs:
            part = y[..., :n]
            total = part if total is None else total + part
        pending = [y[..., n:] for y in outs]
        return total, {"branches": branch_states, "pending": pending}


class Residual(StreamSum):
    """``x + body(x)``: a StreamSum of an identity shortcut and ``body``."""

    def __init__(self, body: nn.Module):
        super().__init__(Identity(), body)
