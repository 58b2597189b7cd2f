"""Feature front-ends as exportable ``nn.Module``s: LogMel and MFCC (no torchaudio needed).

Every constant (window, mel filterbank, DCT matrix, the conv path's DFT kernels) is a buffer
built once in ``__init__``; ``forward`` is only pad / unfold / rfft or conv1d / matmul / log, so
the modules trace with ``torch.jit.trace`` and export with ``torch.export`` and
``torch.onnx.export`` (the dynamo exporter, torch's default) unchanged.

Two DFT paths, ``dft="fft"`` (the default) and ``dft="conv"``, compute the same power
spectrum; they agree to float32 rounding (~1e-5 on the log-mel, tests/test_frontend.py):

* ``"fft"``: cut the (padded) signal into frames with ``unfold`` (a strided view), multiply by
  the window, ``torch.fft.rfft(frames, n=n_fft)`` (zero-padded at the end), power =
  real^2 + imag^2. N log N: BC-ResNet-1's front-end (480-sample window, n_fft 512, 40 mels)
  costs 16.0 k MACs per frame: 5.8 k for the rfft (FFTW's nominal 2.5 N log2 N FLOPs, as
  kwskit.eval.profile counts it) and 10.3 k for the dense mel matmul.
* ``"conv"``: a conv1d with windowed cos/sin kernels, shape (2 (n_fft/2 + 1), 1, win_length)
  and ``stride=hop_length``: a plain real convolution that every runtime has (no complex
  tensors, no DFT op), but 257 x 480 x 2 = 247 k MACs per frame, 257 k with the mel matmul.

The DFT of a ``win_length`` frame zero-padded to ``n_fft`` is the same whichever way it is
computed: the zero samples add nothing, and where the window sits inside the n_fft buffer
(librosa centres it, see ``_lpad``; both paths put it at offset 0) only rotates the phase,
which |.|^2 discards.

Measured (benchmarks/frontend_cost.py -> benchmarks/results/frontend_cost.md, one CPU thread,
torch 2.13, onnxruntime 1.32, a Xeon): per 10-ms hop the BC-ResNet-1 streamer costs 41 k MACs
with "fft" against 282 k with "conv"; the front-end's part drops 16x, 257 k -> 16 k (from 91 %
of the hop to 39 %; the rest is the 25 k-MAC model). In PyTorch "fft" is also faster: a batch
of 100 one-second clips 18 ms vs 45 ms forward, one frame 32 us vs 42 us, 10 frames 44 us vs
101 us. Two exceptions: (1) forward + backward into the waveform is about even (109 ms vs
102 ms), because torch's rfft backward is a full-length complex inverse FFT of a zero-filled
two-sided spectrum (training does not need it: the front-end has no parameters and the
waveform needs no gradient); (2) in onnxruntime "conv" is faster at n_fft 512 (one frame
21 us vs 29 us, 10 frames 63 us vs 112 us): its DFT kernel is slow next to its convolution,
and for an n_fft that is not a power of two (400) it falls back to an O(N^2) DFT (77 us vs
16 us per frame), while at n_fft 1024 "fft" wins there too (43 us vs 96 us).

Why "fft" is the default: both paths export (``torch.onnx.export(..., dynamo=True)``, opset
18 or later, "fft" becoming one ONNX ``DFT`` node) and run in onnxruntime, and "fft" is the
one that cuts the streaming cost per hop (16x fewer front-end MACs, the measure a
microcontroller or DSP budget is written in) and is faster in PyTorch, where kwskit trains
and streams. Choose ``dft="conv"`` for a runtime without an FFT / DFT op (integer or
microcontroller back-ends; the legacy TorchScript ONNX exporter, ``dynamo=False``, which has
no symbolic for ``aten::fft_rfft`` nor for ``unfold`` over a dynamic length), or for
onnxruntime at batch 1 with an n_fft that is not a power of two.

Checkpoints: the window and the DFT kernels follow from the constructor arguments, so they are
non-persistent buffers (they follow ``.to()`` / ``.double()`` but stay out of ``state_dict``)
and a checkpoint loads into either path. Checkpoints written before ``dft`` existed carry
``dft_kernel``; loading one checks that it was built with this module's window and then drops
it (``LogMel._load_from_state_dict``).

Framing (all lengths in samples at ``sample_rate``):

* ``center=False``: frame ``t`` covers ``[t*hop_length, t*hop_length + win_length)``, so a clip
  of N samples gives ``1 + (N - win_length) // hop_length`` frames (98 for 1 s at 30 ms / 10 ms,
  as in TensorFlow's Speech Commands recipe). Zero-padding the window to ``n_fft`` only refines
  the frequency grid; it does not widen the frame. librosa with ``center=False`` frames ``n_fft``
  samples instead, so its frame ``t`` starts ``(n_fft - win_length) // 2`` samples earlier in
  the signal than ours; the spectra are otherwise identical.
* ``center=True``: the signal is padded by ``n_fft // 2`` on both sides (``pad_mode``) and the
  frames are exactly librosa's: ``1 + N // hop_length`` frames, frame ``t`` centred on sample
  ``t*hop_length``.

Either way frame ``t`` depends only on its own ``win_length`` (padded) samples, so the front-end
streams: ``frame_features(frames)`` turns frames a streamer has already cut, (batch,
win_length, n), into exactly the features ``forward`` gives for them (one call per hop).
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from torch.nn import functional as F

from kwskit import SAMPLE_RATE
from kwskit.errors import KwsError

WINDOWS = ("hann", "hamming", "blackman", "rect")
MEL_SCALES = ("htk", "slaney")
MEL_NORMS = (None, "slaney")
PAD_MODES = ("reflect", "constant")
OUT_SHAPES = ("2d", "1d")
DFTS = ("fft", "conv")
DCT_NORMS = ("ortho", None)


# --------------------------------------------------------------------------- mel filterbank
def hz_to_mel(f: torch.Tensor, scale: str = "htk") -> torch.Tensor:
    """Frequency in Hz -> mel. ``htk``: 2595 log10(1 + f/700). ``slaney``: linear up to
    1 kHz (3 mel per 200 Hz), logarithmic above (27 steps per factor 6.4), as in Slaney's
    Auditory Toolbox."""
    f = torch.as_tensor(f, dtype=torch.float64)
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    lin = f * 3.0 / 200.0
    logstep = math.log(6.4) / 27.0
    log = 15.0 + torch.log(torch.clamp(f, min=1e-12) / 1000.0) / logstep
    return torch.where(f >= 1000.0, log, lin)


def mel_to_hz(m: torch.Tensor, scale: str = "htk") -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    m = torch.as_tensor(m, dtype=torch.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    lin = m * 200.0 / 3.0
    logstep = math.log(6.4) / 27.0
    log = 1000.0 * torch.exp(logstep * (m - 15.0))
    return torch.where(m >= 15.0, log, lin)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float,
                   scale: str = "htk", norm: str | None = None) -> torch.Tensor:
    """Triangular mel filters, float64 of shape (n_mels, n_fft // 2 + 1).

    Filter i rises from mel point i to i+1 and falls to i+2, the ``n_mels + 2`` points being
    equally spaced in mel between ``f_min`` and ``f_max`` (Hz); the triangles are evaluated at
    the exact FFT bin frequencies. ``norm="slaney"`` divides each filter by its bandwidth in Hz
    (times 2) so each has unit area, which keeps band energies comparable across widths.
    """
    fft_hz = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    mel_pts = torch.linspace(float(hz_to_mel(f_min, scale)), float(hz_to_mel(f_max, scale)),
                             n_mels + 2, dtype=torch.float64)
    hz_pts = mel_to_hz(mel_pts, scale)
    width = hz_pts[1:] - hz_pts[:-1]  # (n_mels + 1,)
    dist = hz_pts[:, None] - fft_hz[None, :]  # (n_mels + 2, n_freqs): point minus bin
    rising = -dist[:-2] / width[:-1, None]
    falling = dist[2:] / width[1:, None]
    fb = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if norm == "slaney":
        fb = fb * (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    return fb


def dct_matrix(n_out: int, n_in: int, norm: str | None = "ortho") -> torch.Tensor:
    """DCT-II as a float64 (n_out, n_in) matrix: ``y = M @ x`` keeps the first ``n_out``
    coefficients. ``norm=None`` is the unscaled 2*sum(x cos(...)) convention (scipy's
    default); ``"ortho"`` makes the full square matrix orthonormal."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)[:, None]
    m = torch.cos(math.pi / n_in * (n + 0.5) * k)
    if norm is None:
        return 2.0 * m
    m = m * math.sqrt(2.0 / n_in)
    m[0] = m[0] / math.sqrt(2.0)
    return m


def make_window(name: str, length: int) -> torch.Tensor:
    """Periodic (DFT-even) window, float64, as librosa/scipy ``get_window(..., fftbins=True)``."""
    if name == "hann":
        return torch.hann_window(length, periodic=True, dtype=torch.float64)
    if name == "hamming":
        return torch.hamming_window(length, periodic=True, dtype=torch.float64)
    if name == "blackman":
        return torch.blackman_window(length, periodic=True, dtype=torch.float64)
    return torch.ones(length, dtype=torch.float64)  # "rect"


# --------------------------------------------------------------------------- validation
def _bad(field: str, why: str) -> KwsError:
    return KwsError(f"frontend.{field}: {why}")


def _pos_int(field: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise _bad(field, f"must be a positive integer, got {v!r}")
    return v


def _choice(field: str, v, options) -> str | None:
    if v not in options:
        raise _bad(field, f"must be one of {list(options)}, got {v!r}")
    return v


def _number(field: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(field, f"must be a finite number, got {v!r}")
    return float(v)


# --------------------------------------------------------------------------- modules
class LogMel(nn.Module):
    """Log mel spectrogram: waveform -> log(mel power + log_offset).

    Args (units in brackets):
        sample_rate: input rate [Hz].
        n_fft: DFT size [samples]; gives ``n_fft // 2 + 1`` frequency bins.
        win_length: analysis window [samples], <= n_fft; zero-padded (centred) to n_fft.
        hop_length: frame step [samples].
        n_mels: number of mel bands.
        f_min, f_max: filterbank edges [Hz]; ``f_max=None`` means ``sample_rate / 2``.
        window: "hann" | "hamming" | "blackman" | "rect" (periodic versions).
        power: exponent on the magnitude (2.0 = power, 1.0 = magnitude).
        log_offset: added before the log, so silence maps to log(log_offset).
        mel_scale: "htk" | "slaney"; norm: None | "slaney" (unit-area filters).
        center: pad ``n_fft // 2`` on both sides (librosa framing), see module doc.
        pad_mode: "reflect" | "constant" (zeros), used only when ``center=True``.
        out_shape: "2d" -> (batch, 1, n_mels, frames) for 2-D models; "1d" -> (batch, n_mels,
            frames) for 1-D (temporal) models.
        dft: "fft" (frame, window, ``torch.fft.rfft``) | "conv" (conv1d with windowed cos/sin
            kernels). Same numbers to float rounding; see the module doc for costs and export.

    Input: (batch, samples) or (samples,) float waveform in [-1, 1]; a 1-D input is treated
    as a batch of one. Input is cast to the module's dtype (float32 unless ``.double()``).
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = 512, win_length: int = 480,
                 hop_length: int = 160, n_mels: int = 40, f_min: float = 20.0,
                 f_max: float | None = None, window: str = "hann", power: float = 2.0,
                 log_offset: float = 1e-6, mel_scale: str = "htk", norm: str | None = None,
                 center: bool = False, pad_mode: str = "reflect", out_shape: str = "2d",
                 dft: str = "fft"):
        super().__init__()
        self.sample_rate = _pos_int("sample_rate", sample_rate)
        self.n_fft = _pos_int("n_fft", n_fft)
        self.win_length = _pos_int("win_length", win_length)
        self.hop_length = _pos_int("hop_length", hop_length)
        self.n_mels = _pos_int("n_mels", n_mels)
        if self.win_length > self.n_fft:
            raise _bad("win_length", f"must be <= n_fft ({n_fft}), got {win_length}")
        nyquist = sample_rate / 2.0
        self.f_min = _number("f_min", f_min)
        self.f_max = nyquist if f_max is None else _number("f_max", f_max)
        if not 0.0 <= self.f_min < self.f_max:
            raise _bad("f_min", f"must be >= 0 and below f_max ({self.f_max:g} Hz), got {f_min}")
        if self.f_max > nyquist:
            raise _bad("f_max", f"must be <= sample_rate / 2 ({nyquist:g} Hz), got {f_max}")
        self.window = _choice("window", window, WINDOWS)
        self.power = _number("power", power)
        if self.power <= 0:
            raise _bad("power", f"must be > 0, got {power}")
        self.log_offset = _number("log_offset", log_offset)
        if self.log_offset <= 0:
            raise _bad("log_offset", f"must be > 0 (log of zero), got {log_offset}")
        self.mel_scale = _choice("mel_scale", mel_scale, MEL_SCALES)
        self.norm = _choice("norm", norm, MEL_NORMS)
        if not isinstance(center, bool):
            raise _bad("center", f"must be true or false, got {center!r}")
        self.center = center
        self.pad_mode = _choice("pad_mode", pad_mode, PAD_MODES)
        self.out_shape = _choice("out_shape", out_shape, OUT_SHAPES)
        self.dft = _choice("dft", dft, DFTS)
        # Where the window sits inside the n_fft buffer (librosa's pad_center convention).
        self._lpad = (self.n_fft - self.win_length) // 2
        self._rpad = self.n_fft - self.win_length - self._lpad

        # Constants derived from the arguments are non-persistent buffers: they follow .to() /
        # .double() but stay out of state_dict, so a checkpoint loads whichever ``dft`` it was
        # trained with (see _load_from_state_dict for checkpoints that still carry dft_kernel).
        win = make_window(self.window, self.win_length)
        self.register_buffer("window_fn", win.float(), persistent=False)  # (win,)
        # the window zero-padded to n_fft at the end: power_spectrogram cuts n_fft-sample frames
        # and lets the zeros pad them (one pass less than padding win_length frames)
        self.register_buffer("window_nfft", F.pad(win.float(), (0, self.n_fft - self.win_length)),
                             persistent=False)  # (n_fft,)
        if self.dft == "conv":
            # DFT of a win_length frame zero-padded to n_fft: the zero samples add nothing, and
            # the window's offset inside the buffer only rotates the phase, which |.|^2 drops.
            n_freqs = self.n_fft // 2 + 1
            k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
            n = torch.arange(self.win_length, dtype=torch.float64)[None, :]
            angle = 2.0 * math.pi * k * n / self.n_fft
            kernel = torch.cat([torch.cos(angle) * win, -torch.sin(angle) * win])  # (2F, win)
            self.register_buffer("dft_kernel", kernel[:, None, :].float(),  # conv1d (out, in, k)
                                 persistent=False)
        fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max,
                            self.mel_scale, self.norm)
        self.register_buffer("mel_fb", fb.float())  # (n_mels, n_freqs)

    @property
    def n_features(self) -> int:
        """Feature channels per frame (n_mels here, n_mfcc for MFCC)."""
        return self.n_mels

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` input samples (0 if too short)."""
        if self.center:
            return 1 + num_samples // self.hop_length
        if num_samples < self.win_length:
            return 0
        return 1 + (num_samples - self.win_length) // self.hop_length

    def _batch(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() == 1:
            waveform = waveform[None]
        if waveform.dim() != 2:
            raise ValueError(f"{type(self).__name__}: expected (batch, samples) or (samples,), "
                             f"got shape {tuple(waveform.shape)}")
        return waveform.to(self.mel_fb.dtype)

    def _padded(self, waveform: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, samples') whose frame t is ``[t*hop, t*hop + win)``."""
        x = self._batch(waveform)
        # Shape checks give clear messages eagerly; a tracer would bake them in as constants.
        check = not torch.jit.is_tracing()
        n = x.shape[-1]
        if self.center:
            pad = self.n_fft // 2
            if check and self.pad_mode == "reflect" and n <= pad:
                raise ValueError(f"{type(self).__name__}: reflect padding needs more than "
                                 f"{pad} samples, got {n}")
            x = F.pad(x[:, None], (pad, pad), mode=self.pad_mode)[:, 0]
            # Drop the zero-weight ends of librosa's n_fft frames so ours start where its
            # window starts (see module doc); keeps frame count and content equal to librosa.
            x = x[..., self._lpad : x.shape[-1] - self._rpad]
        elif check and n < self.win_length:
            raise ValueError(f"{type(self).__name__}: input has {n} samples, fewer than "
                             f"win_length={self.win_length}")
        return x

    def _fft_power(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, n, win) frames -> |DFT|^2 (B, F, n). rfft zero-pads each windowed frame to n_fft
        at the end: the conv kernels' spectrum (window at offset 0 of the n_fft buffer)."""
        return self._power(torch.fft.rfft(frames * self.window_fn, n=self.n_fft, dim=-1))

    @staticmethod
    def _power(spec: torch.Tensor) -> torch.Tensor:
        """(B, n, F) complex spectrum -> (B, F, n) |.|^2."""
        # .real / .imag are strided views (exported as slices); squaring them is faster than
        # |spec|**2 (a sqrt) or a sum over view_as_real's trailing dim of 2
        pw = spec.real.square() + spec.imag.square()  # (B, n, F)
        return pw.transpose(1, 2)  # a transposed view; matmul takes it as is

    def _conv_power(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 2F, n) cos/sin projections -> |DFT|^2 (B, F, n)."""
        re, im = spec.chunk(2, dim=1)
        return re * re + im * im

    def _finish_power(self, pw: torch.Tensor) -> torch.Tensor:
        if self.power != 2.0:
            # clamp keeps the gradient finite at exact zeros for fractional powers
            pw = torch.clamp(pw, min=1e-30) ** (self.power / 2.0)
        return pw

    def power_spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """(batch, samples) or (samples,) -> |DFT|^power of shape (batch, n_fft//2+1, frames)."""
        x = self._padded(waveform)
        if self.dft == "conv":
            pw = self._conv_power(F.conv1d(x[:, None], self.dft_kernel, stride=self.hop_length))
        else:
            # frames of n_fft samples whose last n_fft - win_length the window zeroes: the same
            # numbers as rfft(win_length frames, n=n_fft), without copying every frame to pad it
            if self.n_fft > self.win_length:
                x = F.pad(x, (0, self.n_fft - self.win_length))
            frames = x.unfold(-1, self.n_fft, self.hop_length)
            pw = self._power(torch.fft.rfft(frames * self.window_nfft, dim=-1))
        return self._finish_power(pw)

    def frame_power(self, frames: torch.Tensor) -> torch.Tensor:
        """Already-cut frames (batch, win_length, n) -> |DFT|^power (batch, n_fft//2+1, n).

        Column j holds frame j's ``win_length`` samples (after any ``center`` padding), as
        ``kwskit.layers.Frames`` cuts them, so this equals ``power_spectrogram`` frame by frame.
        """
        if not torch.jit.is_tracing() and (frames.dim() != 3
                                           or frames.shape[1] != self.win_length):
            raise ValueError(f"{type(self).__name__}: expected frames (batch, "
                             f"{self.win_length}, n), got shape {tuple(frames.shape)}")
        frames = frames.to(self.mel_fb.dtype)
        if self.dft == "conv":
            pw = self._conv_power(torch.matmul(self.dft_kernel[:, 0], frames))
        else:
            pw = self._fft_power(frames.transpose(1, 2))
        return self._finish_power(pw)

    def _features(self, pw: torch.Tensor) -> torch.Tensor:
        """(B, F, n) power -> (B, n_features, n): log mel (MFCC adds its DCT)."""
        return torch.log(torch.matmul(self.mel_fb, pw) + self.log_offset)

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> log mel energies of shape (batch, n_mels, frames)."""
        return LogMel._features(self, self.power_spectrogram(waveform))

    def _shape(self, feats: torch.Tensor) -> torch.Tensor:
        return feats[:, None] if self.out_shape == "2d" else feats

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self._shape(self._features(self.power_spectrogram(waveform)))

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Features of already-cut frames (batch, win_length, n), laid out as ``forward``'s
        output with n frames: what a streamer computes per hop (see :meth:`frame_power`)."""
        return self._shape(self._features(self.frame_power(frames)))

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, "
                f"win_length={self.win_length}, hop_length={self.hop_length}, "
                f"n_mels={self.n_mels}, f_min={self.f_min:g}, f_max={self.f_max:g}, "
                f"window={self.window!r}, mel_scale={self.mel_scale!r}, norm={self.norm!r}, "
                f"center={self.center}, out_shape={self.out_shape!r}, dft={self.dft!r}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Checkpoints written before ``dft`` existed saved the conv DFT kernels as
        # ``dft_kernel``. They are a function of the constructor arguments, so drop them, after
        # checking that they were built with this module's window (row 0 = cos(0) * window):
        # a different win_length or window type must not load silently.
        old = state_dict.pop(prefix + "dft_kernel", None)
        if old is not None:
            ok = (tuple(old.shape) == (2 * (self.n_fft // 2 + 1), 1, self.win_length)
                  and torch.allclose(old[0, 0].to(self.window_fn), self.window_fn, atol=1e-6))
            if not ok:
                error_msgs.append(
                    f"{prefix}dft_kernel: the checkpoint's DFT kernel (shape {tuple(old.shape)}) "
                    f"was not built with this front-end's window ({self.window!r}, "
                    f"win_length={self.win_length}, n_fft={self.n_fft})")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class MFCC(LogMel):
    """MFCC: DCT-II over the mel axis of :class:`LogMel`'s log energies, first ``n_mfcc`` kept.

    Takes every :class:`LogMel` argument plus ``n_mfcc`` (<= n_mels) and ``dct_norm``
    ("ortho" | None). Output (batch, 1, n_mfcc, frames) or (batch, n_mfcc, frames).
    """

    def __init__(self, n_mfcc: int = 40, dct_norm: str | None = "ortho", **logmel_kwargs):
        super().__init__(**logmel_kwargs)
        self.n_mfcc = _pos_int("n_mfcc", n_mfcc)
        if self.n_mfcc > self.n_mels:
            raise _bad("n_mfcc", f"must be <= n_mels ({self.n_mels}), got {n_mfcc}")
        self.dct_norm = _choice("dct_norm", dct_norm, DCT_NORMS)
        self.register_buffer("dct_mat", dct_matrix(self.n_mfcc, self.n_mels, dct_norm).float())

    @property
    def n_features(self) -> int:
        return self.n_mfcc

    def _features(self, pw: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.dct_mat, super()._features(pw))

    def extra_repr(self) -> str:
        return f"n_mfcc={self.n_mfcc}, dct_norm={self.dct_norm!r}, " + super().extra_repr()


class RawWaveform(nn.Identity):
    """The "none" front-end: returns the waveform unchanged, for models that take raw audio
    (e.g. SincConv). Carries the same framing attributes as the others, one frame per sample."""

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        self.sample_rate = _pos_int("sample_rate", sample_rate)
        self.n_fft = self.win_length = self.hop_length = 1
        self.center = False

    def num_frames(self, num_samples: int) -> int:
        return num_samples


FRONTENDS = {"logmel": LogMel, "mfcc": MFCC, "none": RawWaveform}


def _params_of(cls) -> list[str]:
    names = []
    for c in (cls, *(b for b in cls.__mro__[1:] if b in FRONTENDS.values())):
        for p in inspect.signature(c.__init__).parameters.values():
            if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD and p.name not in names:
                names.append(p.name)
    return names


def build_frontend(cfg: dict | None) -> nn.Module:
    """Front-end from a config dict: ``{"type": "logmel" | "mfcc" | "none", **params}``.

    ``None`` or a dict without ``type`` gives the default LogMel. Unknown types or parameter
    names, and bad values, raise ``KwsError`` naming the field (``frontend.<name>``).
    """
    cfg = dict(cfg or {})
    kind = cfg.pop("type", "logmel")
    if kind not in FRONTENDS:
        raise KwsError(f"frontend.type: unknown front-end {kind!r} "
                       f"(known: {', '.join(FRONTENDS)})")
    cls = FRONTENDS[kind]
    known = _params_of(cls)
    for key in cfg:
        if key not in known:
            raise KwsError(f"frontend.{key}: unknown parameter for {kind!r} "
                           f"(known: {', '.join(known)})")
    return cls(**cfg)
