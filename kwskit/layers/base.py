"""The streaming contract every time-aware layer follows, and the frame-wise wrapper.

Tensors carry time on the LAST axis: (batch, channels, frames) or (batch, channels, freq, frames).

A ``StreamModule`` runs in two modes with the same weights:

- ``forward(x)``: the whole sequence at once; the module pads time itself.
- ``step(x_new, state) -> (y_new, state)``: ``x_new`` holds any number of NEW frames (0 too);
  ``y_new`` holds every output frame that became computable. ``init_state(batch)`` gives the
  state to start from. Chunks fed one after another give the same frames as ``forward`` on the
  concatenation, except the last few that ``forward`` computes from its end-of-signal padding.

Two static attributes describe the timing, in frames of the module's INPUT:

- ``stride``: time decimation; output frame j is aligned with input frame ``j * stride``.
- ``lookahead``: future input frames output frame j needs, i.e. it is computable once input
  frame ``j * stride + lookahead`` has arrived. ('same' padding -> right half of the kernel,
  'causal' -> 0.)

State is plain Python data (None, tensors, lists, dicts) returned anew by every step.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.func import functional_call


def empty_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 0-frame tensor shaped like ``module``'s output for inputs shaped like ``x``.

    The frame shape is found by running ``module`` on a 1-frame tensor on the ``meta`` device
    (no compute, no running-stat updates) and cached on the module.
    """
    cache = module.__dict__.setdefault("_kws_frame_shapes", {})
    key = (tuple(x.shape[:-1]), x.dtype, tuple(tuple(p.shape) for p in module.parameters()))
    shape = cache.get(key)
    if shape is None:
        tensors = {k: v.to("meta") for k, v in module.named_parameters()}
        tensors.update({k: v.to("meta") for k, v in module.named_buffers()})
        probe = torch.empty(*x.shape[:-1], 1, dtype=x.dtype, device="meta")
        shape = tuple(functional_call(module, tensors, (probe,)).shape[:-1])
        cache[key] = shape
    return x.new_empty(shape + (0,))


class StreamModule(nn.Module):
    """Base class of layers that run both on whole sequences and chunk by chunk.

    Subclasses implement ``forward`` and ``step``, and set ``stride`` / ``lookahead``
    (or override them as properties).
    """

    stride: int = 1
    lookahead: int = 0

    def init_state(self, batch: int, device=None, dtype=None):
        """State before any frame arrived (None for stateless modules)."""
        return None

    def step(self, x: torch.Tensor, state):
        """Process ``x`` (new frames only); returns (new output frames, new state)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def empty_output(self, x: torch.Tensor) -> torch.Tensor:
        """A 0-frame output for inputs shaped like ``x`` (see ``empty_output``)."""
        return empty_output(self, x)


# Modules that mix time or keep a hidden state: never frame-wise.
_TIME_MIXERS = (nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention, nn.AdaptiveAvgPool1d,
                nn.AdaptiveMaxPool1d, nn.AvgPool1d, nn.MaxPool1d, nn.LPPool1d)


def _last(v):
    return v[-1] if isinstance(v, (tuple, list)) else v


def check_framewise(module: nn.Module) -> None:
    """Raise TypeError when ``module`` could look along time (so it cannot be frame-wise).

    Convolutions and 2-D pooling are accepted when their time kernel and stride are 1 and
    they do not pad time; anything recurrent or attention-like is refused.
    """
    if isinstance(module, nn.Linear):
        raise TypeError("nn.Linear acts on the last (time) axis; it is not frame-wise here")
    for name, m in module.named_modules():
        where = f"{type(module).__name__}{'.' + name if name else ''} ({type(m).__name__})"
        if isinstance(m, StreamModule):
            raise TypeError(f"{where}: a StreamModule inside a frame-wise module "
                            "would not be stepped")
        if isinstance(m, _TIME_MIXERS):
            raise TypeError(f"{where} mixes time; use a streaming layer from kwskit.layers")
        if isinstance(m, nn.modules.conv._ConvNd):
            pad = m.padding
            if _last(m.kernel_size) != 1 or _last(m.stride) != 1 or (
                    not isinstance(pad, str) and _last(pad) != 0):
                raise TypeError(f"{where} has a time kernel/stride/padding; use StreamConv1d/2d")
        if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
            k, s, p = m.kernel_size, m.stride, m.padding
            if _last(k) != 1 or _last(s) != 1 or _last(p) != 0:
                raise TypeError(f"{where} pools over time; use StreamPool2d or TimePool")
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            if _last(m.output_size) is not None:
                raise TypeError(f"{where} pools over time; use TimePool")


class FrameWise(StreamModule):
    """Wraps a module that treats every frame independently: BatchNorm in eval, activations,
    1x1 convs, convs whose time kernel is 1, SubSpectralNorm, Dropout in eval. Stateless:
    ``step`` just applies it. (A bare ``nn.Linear`` acts on the last axis -- time -- so it is
    refused; apply it to channels inside a module that moves the axes.)

    Containers step plain frame-wise modules themselves (``stream_step``), so wrapping is only
    needed where a stand-alone StreamModule is wanted.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        check_framewise(module)
        self.module = module

    def forward(self, x):
        return self.module(x)

    def step(self, x, state=None):
        if x.shape[-1] == 0:
            return self.empty_output(x), state
        return self.module(x), state


class Identity(StreamModule):
    """Passes frames through (the shortcut branch of a residual)."""

    def forward(self, x):
        return x

    def step(self, x, state=None):
        return x, state


class FreqMean(nn.Module):
    """Mean over the frequency axis (dim -2) of (batch, channels, freq, frames).

    ``keepdim=True`` keeps a size-1 frequency axis so the result broadcasts back over
    frequency (BC-ResNet); ``keepdim=False`` gives (batch, channels, frames).
    """

    def __init__(self, keepdim: bool = False):
        super().__init__()
        self.keepdim = keepdim

    def forward(self, x):
        return x.mean(dim=-2, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"keepdim={self.keepdim}"


def checked(module: nn.Module) -> nn.Module:
    """``module`` if it is a StreamModule or passes ``check_framewise`` (else TypeError).

    Containers keep frame-wise modules as they are (clean state-dict keys) and step them
    with ``stream_step``.
    """
    if not isinstance(module, StreamModule):
        check_framewise(module)
    return module


def stride_of(module: nn.Module) -> int:
    return module.stride if isinstance(module, StreamModule) else 1


def lookahead_of(module: nn.Module) -> int:
    return module.lookahead if isinstance(module, StreamModule) else 0


def init_state_of(module: nn.Module, batch: int, device=None, dtype=None):
    if isinstance(module, StreamModule):
        return module.init_state(batch, device, dtype)
    return None


def stream_step(module: nn.Module, x: torch.Tensor, state):
    """``module.step`` for a StreamModule; a frame-wise module is just applied."""
    if isinstance(module, StreamModule):
        return module.step(x, state)
    if x.shape[-1] == 0:
        return empty_output(module, x), state
    return module(x), state


def total_lookahead(layers: Iterable[nn.Module]) -> int:
    """Look-ahead, in input frames, of layers applied one after another.

    sum over layers of ``lookahead_i * prod(stride_j for j < i)``: a layer's look-ahead is
    counted in its own input frames, each of which spans the product of the earlier strides.
    Frame-wise (non-Stream) modules count as stride 1, look-ahead 0.
    """
    total, scale = 0, 1
    for m in layers:
        total += lookahead_of(m) * scale
        scale *= stride_of(m)
    return total
