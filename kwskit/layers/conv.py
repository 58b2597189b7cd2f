"""Convolution, pooling and delay along time, written once for both modes.

All of them are "window" operations: output frame j reads the padded input frames
``[j*stride, j*stride + k_eff)`` where ``k_eff = dilation*(kernel-1) + 1``. Time padding is
explicit, so frame alignment is too:

- ``"same"``:   pad_left = floor(total/2), pad_right = total - pad_left, total = k_eff - 1
                (PyTorch's padding="same" split; output j is centred on input j*stride)
- ``"causal"``: pad_left = total, pad_right = 0 (output j sees inputs <= j*stride only)

``forward`` pads time and runs the op with no time padding ("valid"). In a stream, the state is
a ring buffer of the last ``buffer_len`` input frames (it starts as padding) and, when the input
has warm-up frames, a counter of those still to replace by padding. Each step appends the ``n``
new frames, runs the valid op on the ``n / stride`` windows that end in them and keeps the last
``buffer_len`` frames. ``buffer_len`` >= ``k_eff - stride`` is chosen so that the windows line
up with ``forward``'s (stride phase included); the frames the op still lacks at the end of a
step become this layer's warm-up (``pad_right`` frames, rounded up to the stride).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from kwskit.layers.base import (FrameSpec, StreamModule, frame_shape, mask_warmup,
                                warmup_counter)

PADDINGS = ("same", "causal")


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return int(v[0]), int(v[1])
    raise ValueError(f"{name} must be an int or a (freq, time) pair, got {v!r}")


def split_padding(total: int, mode: str) -> tuple[int, int]:
    """(left, right) padding for a window of ``total + 1`` frames under ``mode``."""
    if mode == "same":
        return total // 2, total - total // 2
    if mode == "causal":
        return total, 0
    raise ValueError(f"time padding must be one of {PADDINGS}, got {mode!r}")


def _freq_padding(pad, total: int) -> tuple[int, int]:
    """Frequency padding: 'same' (split like time), 'valid' (none), an int, or (left, right)."""
    if pad == "same":
        return total // 2, total - total // 2
    if pad == "valid":
        return 0, 0
    if isinstance(pad, int):
        return pad, pad
    if isinstance(pad, (tuple, list)) and len(pad) == 2:
        return int(pad[0]), int(pad[1])
    raise ValueError(f"freq_padding must be 'same', 'valid', an int or a pair, got {pad!r}")


class TimeWindow(StreamModule):
    """Base of every op that reads a window of frames. Subclasses call ``_set_window`` and
    implement ``_valid(x)``: the op on already time-padded input (no time padding)."""

    pad_value: float = 0.0

    def _set_window(self, kernel: int, stride: int, dilation: int, padding: str):
        if kernel < 1 or stride < 1 or dilation < 1:
            raise ValueError(f"kernel/stride/dilation must be >= 1, "
                             f"got {kernel}/{stride}/{dilation}")
        total = dilation * (kernel - 1)
        self.k_eff = total + 1
        self.time_stride = stride
        self.padding_mode = padding
        self.pad_left, self.pad_right = split_padding(total, padding)

    @property
    def stride(self) -> int:
        return self.time_stride

    @property
    def lookahead(self) -> int:
        return self.pad_right

    def _valid(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x):
        if self.pad_left or self.pad_right:  # F.pad copies even when it pads nothing
            x = F.pad(x, (self.pad_left, self.pad_right), value=self.pad_value)
        return self._valid(x)

    def buffer_len(self, warmup: int) -> int:
        """Frames kept between steps: the least L >= k_eff - stride that puts window starts
        on forward's grid (L + warmup - pad_left divisible by the stride)."""
        s = self.time_stride
        length = max(0, self.k_eff - s)
        return length + (self.pad_left - warmup - length) % s

    def stream_init(self, batch, spec, device=None, dtype=None):
        length = self.buffer_len(spec.warmup)
        states = []
        if length:
            states.append(torch.full((batch, *spec.shape, length), self.pad_value,
                                     device=device, dtype=dtype))
        if spec.warmup:
            states.append(warmup_counter(spec.warmup, device))
        self._plan = (length, bool(spec.warmup))  # static for this layer in this model
        out = FrameSpec(frame_shape(self, spec.shape, self.k_eff),
                        (length + spec.warmup - self.pad_left) // self.time_stride)
        return tuple(states), out

    def step(self, x, states):
        self._check_chunk(x)
        length, masked = self._plan
        buf = states[0] if length else None
        new = []
        if masked:
            x, left = mask_warmup(x, states[-1], self.pad_value)
        if buf is not None:
            x = torch.cat([buf, x], dim=-1)
            new.append(x[..., x.shape[-1] - length:])
        if masked:
            new.append(left)
        k, s = self.k_eff, self.time_stride
        n_out = (x.shape[-1] - length) // s
        end = (n_out - 1) * s + k
        # skip a no-op slice (stride 1: the buffer is exactly k - 1): one graph node less
        return self._valid(x if end == x.shape[-1] else x[..., :end]), tuple(new)


class StreamConv1d(TimeWindow):
    """Conv1d over (batch, channels, frames) with explicit time padding ("same"/"causal")."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = True, padding: str = "same"):
        super().__init__()
        self._set_window(kernel_size, stride, dilation, padding)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                              dilation=dilation, groups=groups, bias=bias)

    def _valid(self, x):
        return self.conv(x)

    def extra_repr(self) -> str:
        return f"padding={self.padding_mode!r}"


class _DepthwiseConv2d(torch.autograd.Function):
    """Depthwise conv2d whose input gradient runs as a forward convolution: the flipped kernel
    over the gradient (zero-stuffed between rows for a stride), padded to "full". The same
    numbers as autograd's, but oneDNN's depthwise backward-data kernel is 5-15x slower than
    its forward one on BC-ResNet's shapes (e.g. 6 ms against 0.4 ms for the dilated time
    convolution over 100 x 60 x 101 frames in bf16, 4 ms against 0.7 for a stride-2 one)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = stride, padding, dilation
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        kernel = weight.shape[-2:]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            spread = grad
            if tuple(stride) != (1, 1):  # the positions the kernel's first tap visited
                size = [n + 2 * p - d * (k - 1)
                        for n, p, d, k in zip(x.shape[-2:], padding, dilation, kernel)]
                spread = grad.new_zeros(*grad.shape[:2], *size)
                spread[..., ::stride[0], ::stride[1]] = grad
            full = tuple(d * (k - 1) - p for k, p, d in zip(kernel, padding, dilation))
            grad_x = F.conv2d(spread, weight.flip(-2, -1), None, 1, full, dilation, x.shape[1])
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, (0, 0), x.shape[1],
                (False, True, False))[1]
        return grad_x, grad_w, None, None, None


@functools.lru_cache(maxsize=64)  # built once per layer geometry, not per step; read only
def _band_taps(size: int, kernel: int, stride: int, padding: int, dilation: int,
               dtype: torch.dtype, device) -> torch.Tensor:
    """(kernel, out, size) 0/1 matrices: tap j of output row o reads input row
    o*stride - padding + j*dilation (rows outside the input are the zero padding)."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    taps = torch.zeros(kernel, out, size, dtype=dtype, device=device)
    rows = torch.arange(out, device=device)
    for j in range(kernel):
        src = rows * stride - padding + j * dilation
        inside = (src >= 0) & (src < size)
        taps[j, rows[inside], src[inside]] = 1
    return taps


class _FreqBandMatmul(torch.autograd.Function):
    """Depthwise convolution along frequency only (time kernel 1) as one batched matmul: channel
    c's kernel becomes a banded (out, in) matrix applied to every frame. oneDNN runs a (3, 1)
    depthwise kernel on plain NCHW input at a fraction of memory speed (13 ms forward for
    100 x 36 x 20 x 101 in bf16, where the matmul takes 1.1 ms), and its gradients the same."""

    @staticmethod
    def forward(ctx, x, weight, taps):
        band = torch.einsum("ck,koi->coi", weight.flatten(1), taps)
        ctx.save_for_backward(x, band, taps)
        return torch.matmul(band, x)

    @staticmethod
    def backward(ctx, grad):
        x, band, taps = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(band.transpose(1, 2), grad)
        if ctx.needs_input_grad[1]:
            grad_band = torch.matmul(grad, x.transpose(2, 3)).sum(0, dtype=torch.float32)
            grad_w = torch.einsum("coi,koi->ck", grad_band, taps.float())
            grad_w = grad_w.to(band.dtype).view(*grad_w.shape[:1], 1, -1, 1)
        return grad_x, grad_w, None


def _time_taps(x, weight, dilation: int):
    """Depthwise convolution along time only (frequency kernel 1, stride 1, no padding) as a
    sum of shifted, scaled copies of ``x`` in float32 (or wider), returned in ``x``'s dtype.
    On BC-ResNet's (batch, C, 1, frames) inputs oneDNN's depthwise kernels cost 1.5-2x these
    few small element-wise ops, forward and backward together."""
    kernel = weight.shape[-1]
    out = x.shape[-1] - dilation * (kernel - 1)
    acc = torch.promote_types(x.dtype, torch.float32)
    x32, w32 = x.to(acc), weight.to(acc).view(1, -1, 1, kernel)
    y = x32[..., :out] * w32[..., :1]
    for j in range(1, kernel):
        y = y + x32[..., j * dilation:j * dilation + out] * w32[..., j:j + 1]
    return y.to(x.dtype)


class _PointwiseMatmul(torch.autograd.Function):
    """Bias-free 1x1 convolution as a matmul over the flattened (freq x frames) plane, with its
    gradients as two more. oneDNN reads a 1x1 weight as channels-last and converts plain NCHW
    activations around it: 1.9 ms forward and 8.7 ms backward for 100 x 16 -> 8 x 20 x 101 in
    bf16, where each of the three matmuls takes 0.35 ms."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return _batched(weight.flatten(1), x.flatten(2)).view(x.shape[0], -1, *x.shape[2:])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        flat_grad, grad_x, grad_w = grad.flatten(2), None, None
        if ctx.needs_input_grad[0]:
            grad_x = _batched(weight.flatten(1).t(), flat_grad).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(flat_grad, x.flatten(2).transpose(1, 2)).sum(
                0, dtype=torch.float32).to(weight.dtype).view(weight.shape)
        return grad_x, grad_w


def _batched(matrix, batch):
    """``matrix`` @ each (rows, n) matrix of ``batch`` as one bmm. torch.matmul would fold the
    batch into a 2-D product through a transposed copy of ``batch`` and of its result."""
    return torch.bmm(matrix.expand(batch.shape[0], -1, -1), batch)


class _CpuTrainingConv2d(nn.Conv2d):
    """nn.Conv2d whose training steps on a CPU run ``_train_step`` (faster than oneDNN's
    kernels for this layer's geometry; measured on oneDNN only, a GPU keeps its own kernels).
    Evaluation, export and the state dict are nn.Conv2d's own."""

    _cpu_step = True  # False: this geometry keeps nn.Conv2d's kernels in training too

    def forward(self, x):
        if not (self._cpu_step and self.training and torch.is_grad_enabled()
                and x.device.type == "cpu"):
            return super().forward(x)
        weight = self.weight
        if torch.is_autocast_enabled(x.device.type):  # cast as autocast casts a convolution
            dtype = torch.get_autocast_dtype(x.device.type)
            with torch.autocast(x.device.type, enabled=False):
                return self._train_step(x.to(dtype), weight.to(dtype))
        return self._train_step(x, weight)

    def _train_step(self, x, weight):
        raise NotImplementedError


class DepthwiseConv2d(_CpuTrainingConv2d):
    """Bias-free depthwise convolution (groups = channels). In CPU training a frequency-only
    kernel (time kernel 1, BC-ResNet's) runs as _FreqBandMatmul, a time-only one as
    _time_taps, any other as _DepthwiseConv2d (oneDNN's forward with a faster input
    gradient)."""

    def __init__(self, channels: int, kernel_size, stride=1, padding=0, dilation=1):
        super().__init__(channels, channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=channels, bias=False)
        # "full" padding of the gradient must not be negative
        self._cpu_step = isinstance(self.padding, tuple) and all(
            p <= d * (k - 1) for p, d, k in zip(self.padding, self.dilation, self.kernel_size))
        self._freq_only = self._cpu_step and (self.kernel_size[1], self.stride[1],
                                              self.padding[1]) == (1, 1, 0)
        self._time_only = (self.kernel_size[0], self.stride, self.padding) == (1, (1, 1), (0, 0))

    def _train_step(self, x, weight):
        if self._time_only:  # the float32 weight itself: its sums run in float32
            return _time_taps(x, self.weight, self.dilation[1])
        if self._freq_only:
            (kf, _), (sf, _), (pf, _), (df, _) = (
                self.kernel_size, self.stride, self.padding, self.dilation)
            taps = _band_taps(x.shape[2], kf, sf, pf, df, x.dtype, x.device)
            return _FreqBandMatmul.apply(x, weight, taps)
        return _DepthwiseConv2d.apply(x, weight, self.stride, self.padding, self.dilation)


class PointwiseConv2d(_CpuTrainingConv2d):
    """Bias-free 1x1 convolution; in CPU training a matmul (_PointwiseMatmul). It pays for
    narrow layers over many (freq x frames) positions, as in BC-ResNet; wide layers over few
    positions (DS-CNN-L: 276 channels, 5 x 25) train faster with oneDNN's own kernel."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1, bias=False)

    def _train_step(self, x, weight):
        return _PointwiseMatmul.apply(x, weight)


class StreamConv2d(TimeWindow):
    """Conv2d over (batch, channels, freq, frames); kernel/stride/dilation are (freq, time).

    Time is padded per ``padding`` ("same"/"causal"); frequency per ``freq_padding``
    ('same', 'valid', an int, or (top, bottom)). Frequency is a fixed-size axis, so its
    padding never affects streaming.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1,
                 groups: int = 1, bias: bool = True, padding: str = "same", freq_padding="same"):
        super().__init__()
        kf, kt = _pair(kernel_size, "kernel_size")
        sf, st = _pair(stride, "stride")
        df, dt = _pair(dilation, "dilation")
        self._set_window(kt, st, dt, padding)
        self.freq_pad = _freq_padding(freq_padding, df * (kf - 1))
        symmetric = self.freq_pad[0] == self.freq_pad[1]
        # symmetric frequency padding goes into the conv itself (one copy fewer)
        geometry = dict(stride=(sf, st), padding=(self.freq_pad[0] if symmetric else 0, 0),
                        dilation=(df, dt))
        if groups == in_channels == out_channels and not bias:
            self.conv = DepthwiseConv2d(in_channels, (kf, kt), **geometry)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, (kf, kt), groups=groups, bias=bias,
                                  **geometry)
        self._pad_freq_outside = not symmetric

    def _valid(self, x):
        if self._pad_freq_outside:
            x = F.pad(x, (0, 0, self.freq_pad[0], self.freq_pad[1]))
        return self.conv(x)

    def extra_repr(self) -> str:
        return f"padding={self.padding_mode!r}, freq_padding={self.freq_pad}"


class StreamPool1d(TimeWindow):
    """Average or max pooling over time of (batch, channels, frames).

    "avg" pads with zeros that count in the average (like count_include_pad=True); "max"
    pads with -inf. ``stride`` defaults to ``kernel_size`` as in PyTorch.
    """

    def __init__(self, kind: str, kernel_size: int, stride: int | None = None,
                 padding: str = "same"):
        super().__init__()
        if kind not in ("avg", "max"):
            raise ValueError(f"pool kind must be 'avg' or 'max', got {kind!r}")
        self.kind = kind
        self.kernel_size = kernel_size
        self._set_window(kernel_size, stride or kernel_size, 1, padding)
        self.pad_value = 0.0 if kind == "avg" else float("-inf")

    def _valid(self, x):
        fn = F.avg_pool1d if self.kind == "avg" else F.max_pool1d
        return fn(x, self.kernel_size, self.time_stride)

    def extra_repr(self) -> str:
        return f"{self.kind!r}, kernel_size={self.kernel_size}, stride={self.time_stride}, " \
               f"padding={self.padding_mode!r}"


class StreamPool2d(TimeWindow):
    """Average or max pooling of (batch, channels, freq, frames); sizes are (freq, time).

    Time padding as in StreamPool1d; ``freq_padding`` is a symmetric int (PyTorch's own
    pooling padding: zeros counted for "avg", ignored for "max").
    """

    def __init__(self, kind: str, kernel_size, stride=None, padding: str = "same",
                 freq_padding: int = 0):
        super().__init__()
        if kind not in ("avg", "max"):
            raise ValueError(f"pool kind must be 'avg' or 'max', got {kind!r}")
        self.kind = kind
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.pool_stride = _pair(stride if stride is not None else kernel_size, "stride")
        self.freq_padding = int(freq_padding)
        self._set_window(self.kernel_size[1], self.pool_stride[1], 1, padding)
        self.pad_value = 0.0 if kind == "avg" else float("-inf")

    def _valid(self, x):
        fn = F.avg_pool2d if self.kind == "avg" else F.max_pool2d
        return fn(x, self.kernel_size, self.pool_stride, (self.freq_padding, 0))

    def extra_repr(self) -> str:
        return f"{self.kind!r}, kernel_size={self.kernel_size}, stride={self.pool_stride}, " \
               f"padding={self.padding_mode!r}"


class Delay(TimeWindow):
    """Delays a stream by ``n`` frames; the identity on whole sequences.

    A window of ``n + 1`` frames padded entirely on the right that returns the window's first
    frame: so ``forward(x) == x`` (aligned), while ``step`` emits frame j once frame j+n has
    arrived (``lookahead == n``). Use it to line a fast path up with a slower one.
    """

    def __init__(self, n: int):
        super().__init__()
        if n < 0:
            raise ValueError(f"Delay needs n >= 0, got {n}")
        self.n = n
        self.k_eff, self.time_stride, self.padding_mode = n + 1, 1, "right"
        self.pad_left, self.pad_right = 0, n

    def forward(self, x):
        return x

    def _valid(self, x):
        return x[..., : x.shape[-1] - self.n]

    def extra_repr(self) -> str:
        return f"n={self.n}"


class Frames(TimeWindow):
    """Cuts (batch, 1, samples) into analysis frames (batch, win, n): frame j covers padded
    samples ``[j*hop, j*hop + win)``, i.e. input samples from ``j*hop - pad_left``. The
    framing of a spectral front-end as a streaming layer: its sample buffer is a state like
    any other, and the front-end turns each frame into features."""

    def __init__(self, win: int, hop: int, pad_left: int = 0):
        super().__init__()
        if not 0 <= pad_left < win:
            raise ValueError(f"Frames: pad_left must be in [0, {win}), got {pad_left}")
        self.win, self.hop = int(win), int(hop)
        self.k_eff, self.time_stride, self.padding_mode = self.win, self.hop, "frames"
        self.pad_left, self.pad_right = int(pad_left), self.win - 1 - int(pad_left)

    def _valid(self, x):
        return x[:, 0].unfold(-1, self.win, self.hop).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"win={self.win}, hop={self.hop}, pad_left={self.pad_left}"
