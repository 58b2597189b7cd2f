"""The streaming contract every time-aware layer follows, and the frame-wise wrapper.

Tensors carry time on the LAST axis: (batch, channels, frames) or (batch, channels, freq, frames).

A ``StreamModule`` runs in two modes with the same weights:

- ``forward(x)``: the whole sequence at once; the module pads time itself.
- streaming: ``states, spec = stream_init(batch, spec_in)`` once, then
  ``y, states = step(x, states)`` per chunk. ``states`` is a flat tuple of tensors whose shapes
  are fixed by the layer (ring buffers of past frames, counters, hidden states): no None, no
  Python numbers, no shapes found from the first chunk, so ``torch.export`` and the ONNX
  exporter take ``step`` as it is.

Fixed shapes mean a fixed rhythm: every step takes ``n`` new frames, ``n`` a multiple of the
layer's ``stride``, and returns exactly ``n / stride`` frames. A layer that needs look-ahead
therefore answers late: its first output frames stand for times before the stream began
("warm-up" frames). ``FrameSpec.warmup`` counts them; the next layer that looks along time
replaces them by its padding value (``mask_warmup``), so every later frame equals ``forward``
on the whole sequence exactly, shifted by the warm-up. The model's total warm-up is its delay.

Two static attributes describe the timing, in frames of the module's INPUT:

- ``stride``: time decimation; output frame j is aligned with input frame ``j * stride``.
- ``lookahead``: future input frames output frame j needs, i.e. it is computable once input
  frame ``j * stride + lookahead`` has arrived. ('same' padding -> right half of the kernel,
  'causal' -> 0.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn
from torch.func import functional_call

States = tuple  # a flat tuple of tensors


@dataclass(frozen=True)
class FrameSpec:
    """What flows from one layer to the next in a stream: the shape of one frame (no batch,
    no time axis) and how many leading frames are warm-up (before the stream began)."""

    shape: tuple
    warmup: int = 0


def frame_shape(module: nn.Module, shape: tuple, frames: int = 1) -> tuple:
    """Shape of one output frame of ``module`` for input frames of ``shape``, found by running
    it on ``frames`` frames on the ``meta`` device (no compute, no running-stat updates)."""
    tensors = {k: v.to("meta") for k, v in module.named_parameters()}
    tensors.update({k: v.to("meta") for k, v in module.named_buffers()})
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    probe = torch.empty(1, *shape, frames, device="meta", dtype=dtype)
    return tuple(functional_call(module, tensors, (probe,)).shape[1:-1])


def mask_warmup(x: torch.Tensor, left: torch.Tensor, value: float):
    """Replace the first ``left`` frames of ``x`` (warm-up, before the stream began) by
    ``value``; returns (x, frames still to replace). ``left`` is a 1-element int64 tensor."""
    n = x.shape[-1]
    keep = torch.arange(n, device=x.device) >= left
    x = torch.where(keep, x, torch.full((), value, dtype=x.dtype, device=x.device))
    return x, torch.clamp(left - n, min=0)


def warmup_counter(warmup: int, device=None) -> torch.Tensor:
    return torch.full((1,), int(warmup), dtype=torch.int64, device=device)


class StreamModule(nn.Module):
    """Base class of layers that run both on whole sequences and chunk by chunk.

    Subclasses implement ``forward``, ``stream_init`` and ``step``, and set ``stride`` /
    ``lookahead`` (or override them as properties).
    """

    stride: int = 1
    lookahead: int = 0

    def stream_init(self, batch: int, spec: FrameSpec, device=None,
                    dtype=None) -> tuple[States, FrameSpec]:
        """(initial states, spec of the output frames) for ``batch`` streams whose input
        frames follow ``spec``. Stateless by default."""
        return (), FrameSpec(frame_shape(self, spec.shape), spec.warmup)

    def step(self, x: torch.Tensor, states: States) -> tuple[torch.Tensor, States]:
        """Process ``x`` (new frames only); returns (new output frames, new states)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def _check_chunk(self, x: torch.Tensor) -> None:
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling() \
                and x.shape[-1] % self.stride:
            raise ValueError(f"{type(self).__name__}: chunks must hold a multiple of "
                             f"{self.stride} frames (its stride), got {x.shape[-1]}")


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

    def step(self, x, states=()):
        return self.module(x), states


class Identity(StreamModule):
    """Passes frames through (the shortcut branch of a residual)."""

    def forward(self, x):
        return x

    def stream_init(self, batch, spec, device=None, dtype=None):
        return (), spec

    def step(self, x, states=()):
        return x, states


class FreqMean(nn.Module):
    """Mean over the frequency axis (dim -2) of (batch, channels, freq, frames).

    ``keepdim=True`` keeps a size-1 frequency axis so the result broadcasts back over
    frequency (BC-ResNet); ``keepdim=False`` gives (batch, channels, frames).
    """

    def __init__(self, keepdim: bool = False):
        super().__init__()
        self.keepdim = keepdim

    def forward(self, x):
        if x.dtype == torch.bfloat16:
            # mean() of bf16 first copies all of x to float32 and its gradient writes a full-size
            # tensor; sum() accumulates in float32 without the copy and its gradient is a view
            return x.sum(dim=-2, keepdim=self.keepdim) / x.shape[-2]
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


def stream_init_of(module: nn.Module, batch: int, spec: FrameSpec, device=None,
                   dtype=None) -> tuple[States, FrameSpec]:
    """``module.stream_init`` for a StreamModule; a frame-wise module has no state."""
    if isinstance(module, StreamModule):
        return module.stream_init(batch, spec, device, dtype)
    return (), FrameSpec(frame_shape(module, spec.shape), spec.warmup)


def stream_step(module: nn.Module, x: torch.Tensor, states: States):
    """``module.step`` for a StreamModule; a frame-wise module is just applied."""
    if isinstance(module, StreamModule):
        return module.step(x, states)
    return module(x), states


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
