"""Learnable sinc band-pass filterbank on raw audio (SincNet), streaming-aware.

Ravanelli & Bengio 2018, "Speaker Recognition from Raw Waveform with SincNet",
arXiv:1808.00158: each output channel is a band-pass FIR filter fixed to the form

    g[n] = 2 f2 sinc(2 f2 n) - 2 f1 sinc(2 f1 n),    sinc(x) = sin(pi x) / (pi x),

times a Hamming window, so a filter has only two trainable numbers: its low cut-off ``f1`` and
its band width ``f2 - f1`` (frequencies in cycles per sample). The filters are rebuilt from
these parameters on every call, then applied as an ordinary strided conv1d -- so streaming is
the generic strided window buffer of ``TimeWindow`` (``StreamConv1d``'s base class).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kwskit.features.frontend import hz_to_mel, mel_to_hz
from kwskit.layers.conv import TimeWindow


class SincConv1d(TimeWindow):
    """Band-pass sinc filterbank: (batch, 1, samples) -> (batch, out_channels, frames).

    Args (units in brackets):
        out_channels: number of band-pass filters.
        kernel_size: filter length [samples]; odd, so each filter is symmetric (linear phase).
        stride: hop between output frames [samples].
        sample_rate: input rate [Hz]; only used to place the initial bands and the minima.
        min_low_hz: smallest allowed low cut-off [Hz].
        min_band_hz: smallest allowed band width [Hz].
        init_high_hz: top edge of the initial mel-spaced bands [Hz] (default nyquist - 100).
        padding: 'same' (look-ahead ``kernel_size // 2`` samples) or 'causal' (none).

    Parameters ``low`` and ``band`` hold, per filter, the low cut-off above ``min_low_hz`` and
    the width above ``min_band_hz``, both as fractions of the sample rate: a learning rate of
    1e-3 then moves a band edge by ~16 Hz per Adam step at 16 kHz, where Hz units would barely
    move. Initial bands are mel-spaced and overlap like a mel filterbank: filter i spans mel
    points i to i+2 of ``out_channels + 2`` points from ``min_low_hz`` to ``init_high_hz``.
    Each filter is divided by its centre tap ``2 (f2 - f1)`` so every band has the same peak.
    """

    def __init__(self, out_channels: int = 40, kernel_size: int = 101, stride: int = 8,
                 sample_rate: int = 16000, min_low_hz: float = 50.0, min_band_hz: float = 50.0,
                 init_high_hz: float | None = None, padding: str = "same"):
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3 (symmetric filters), "
                             f"got {kernel_size}")
        nyquist = sample_rate / 2.0
        high = nyquist - 100.0 if init_high_hz is None else float(init_high_hz)
        if not 0 <= min_low_hz < high <= nyquist or not 0 < min_band_hz < nyquist:
            raise ValueError(f"need 0 <= min_low_hz ({min_low_hz}) < init_high_hz ({high}) "
                             f"<= sample_rate/2 ({nyquist}) and 0 < min_band_hz "
                             f"({min_band_hz}) < sample_rate/2")
        self._set_window(kernel_size, stride, 1, padding)
        self.out_channels, self.kernel_size = out_channels, kernel_size
        self.sample_rate = int(sample_rate)
        self.min_low, self.min_band = min_low_hz / sample_rate, min_band_hz / sample_rate

        mel = torch.linspace(float(hz_to_mel(min_low_hz)), float(hz_to_mel(high)),
                             out_channels + 2, dtype=torch.float64)  # HTK mel scale
        edges = mel_to_hz(mel) / sample_rate
        low0, high0 = edges[:-2], edges[2:]
        self.low = nn.Parameter((low0 - self.min_low).clamp(min=0.0).float())
        self.band = nn.Parameter((high0 - low0 - self.min_band).clamp(min=0.0).float())
        # Tap times (samples from the centre; its 0 replaced by 1 to avoid 0/0), the centre
        # mask and the window are buffers, so they follow .to() (and the meta device of shape
        # probes); they are not saved in checkpoints.
        half = (kernel_size - 1) / 2.0
        taps = torch.arange(kernel_size, dtype=torch.float32) - half
        self.register_buffer("centre", taps == 0, persistent=False)
        self.register_buffer("taps_nonzero", torch.where(taps == 0, 1.0, taps), persistent=False)
        self.register_buffer("window", torch.hamming_window(kernel_size, periodic=False),
                             persistent=False)

    def band_edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(f1, f2): low and high cut-off of every filter, in cycles per sample."""
        f1 = (self.min_low + self.low.abs()).clamp(max=0.5 - self.min_band)
        f2 = (f1 + self.min_band + self.band.abs()).clamp(max=0.5)
        return f1, f2

    def band_edges_hz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) cut-off of every filter in Hz (detached)."""
        f1, f2 = self.band_edges()
        return f1.detach() * self.sample_rate, f2.detach() * self.sample_rate

    def filters(self) -> torch.Tensor:
        """The current filterbank as conv1d weights (out_channels, 1, kernel_size)."""
        f1, f2 = (f[:, None] for f in self.band_edges())
        # 2 f2 sinc(2 f2 n) - 2 f1 sinc(2 f1 n) = (sin(2 pi f2 n) - sin(2 pi f1 n)) / (pi n) off
        # the centre; divided by the centre tap 2 (f2 - f1), the centre itself is exactly 1.
        # Written out (no torch.sinc, no 0/0) so exporters and autograd see plain sin / div.
        n = self.taps_nonzero[None, :]
        bandpass = (torch.sin(2 * math.pi * f2 * n) - torch.sin(2 * math.pi * f1 * n)) / (
            math.pi * n * 2 * (f2 - f1))
        bandpass = torch.where(self.centre[None, :], torch.ones_like(bandpass), bandpass)
        return (bandpass * self.window)[:, None, :]

    def _valid(self, x):
        return F.conv1d(x, self.filters().to(x.dtype), stride=self.time_stride)

    def extra_repr(self) -> str:
        return (f"1, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.time_stride}, sample_rate={self.sample_rate}, "
                f"padding={self.padding_mode!r}")


class LogCompression(nn.Module):
    """``log(|x| + 1)``, element-wise (frame-wise): compresses the filterbank output's dynamic
    range like the log of a mel spectrogram, but stays finite and defined at zero."""

    def forward(self, x):
        return torch.log1p(x.abs())
