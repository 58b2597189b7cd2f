"""Hardware arithmetic for SincConv models: CORDIC sine, shift-subtract division, cheap log.

Mittermaier, Kürzinger, Waschneck, Rigoll 2019, "Small-footprint keyword spotting on raw audio
data with sinc-convolutions", arXiv:1911.02086, name as their next step computing the sinc
filters and the log compression the way a small chip would. This module does that in torch,
vectorised and deterministic, so the effect on accuracy can be measured on a trained model:

- ``cordic_sin``: CORDIC in rotation mode (Volder 1959) on int64 tensors holding fixed-point
  numbers with ``frac_bits`` fractional bits ("Q(B)": the value v is the integer round(v 2^B)):
  the iterations are shifts, adds and an integer arctan table; the argument is a phase in
  turns, wrapped to one turn by a bit mask, folded into [-pi/2, pi/2] with sin(pi - a) =
  sin(a) and turned into radians by one constant multiply.
- ``fixed_div``: restoring (shift-subtract) division, one quotient bit per step, as a bit-serial
  divider computes it; the quotient is truncated toward zero (at most one LSB off).
- ``fixed_point_sinc_filters``: the SincNet taps (sin(2 pi f2 n) - sin(2 pi f1 n)) /
  (2 pi n (f2 - f1)) times the window, with the two above (cut-offs, 2 pi and the window
  quantised to Q(B); n is the integer tap offset, so the phase f n is an integer product -- a
  phase accumulator).
- ``log2_pwl``: log2(x) = exponent + a piecewise-linear mantissa (Mitchell 1962, "Computer
  multiplication and division using binary logarithms": one segment, log2(1 + u) ~ u, error
  at most 0.0861; k chords through log2(1 + j/k) shrink it about k^2-fold).

``FixedPointSincConv1d`` and ``Log2PwlCompression`` are drop-in replacements for the model's
``SincConv1d`` and ``LogCompression``; ``apply_approx(pipeline, spec)`` swaps them in (the
"approx" arch edit of kwskit.models.io, so an approximated run reloads as it is).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers.sinc import LogCompression, SincConv1d

SINC_MODES = ("exact", "cordic")
LOG_MODES = ("exact", "log2pwl")
ITERS_RANGE = (1, 32)        # CORDIC steps; past frac_bits the shifts and table entries are 0
FRAC_BITS_RANGE = (10, 24)   # >= 10: a 50 Hz band is >= 3 LSB; <= 24: products fit in int64
SEGMENTS_RANGE = (1, 64)
DEFAULT_SPEC = {"sinc": "cordic", "log": "log2pwl", "cordic_iters": 16, "frac_bits": 16,
                "log_segments": 1}


# ------------------------------------------------------------------------------ fixed point
def to_fixed(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Q(frac_bits) int64 of a float tensor: round(x 2^B), computed in float64."""
    return torch.round(x.double() * (1 << frac_bits)).to(torch.int64)


def from_fixed(q: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """The float64 value of a Q(frac_bits) int64 tensor."""
    return q.double() / (1 << frac_bits)


def _mul(a: torch.Tensor, b, frac_bits: int) -> torch.Tensor:
    """Q(B) x Q(B) -> Q(B): the integer product shifted back, rounded to nearest."""
    return (a * b + (1 << (frac_bits - 1))) >> frac_bits


def cordic_gain(iters: int) -> float:
    """1 / K_N: CORDIC's rotations lengthen the vector by prod sqrt(1 + 2^-2i); starting from
    x = 1 / that product gives y = sin(z) directly."""
    return math.prod(1.0 / math.sqrt(1.0 + 2.0 ** (-2 * i)) for i in range(iters))


def cordic_sin_phase(phase: torch.Tensor, iters: int, frac_bits: int) -> torch.Tensor:
    """sin(2 pi phase) in Q(B) for an int64 ``phase`` in Q(B) turns (any integer: wraps).

    Range reduction: the phase's low B bits are one turn (a mask), re-centred to [-1/2, 1/2)
    turn, then a quarter turn past +-1/4 is folded back (sin(pi - a) = sin(a)), so the CORDIC
    angle z lies in [-pi/2, pi/2], inside its convergence range (sum of atan 2^-i = 1.743 rad).
    Rotation mode: z is driven to 0 by +-atan(2^-i) steps while (x, y) turns with it.
    """
    b = frac_bits
    full, half, quarter = 1 << b, 1 << (b - 1), 1 << (b - 2)
    p = ((phase + half) & (full - 1)) - half
    p = torch.where(p > quarter, half - p, torch.where(p < -quarter, -half - p, p))
    z = _mul(p, round(2 * math.pi * full), b)                         # radians, Q(B)
    x = torch.full_like(z, round(cordic_gain(iters) * full))
    y = torch.zeros_like(z)
    for i in range(iters):
        step = round(math.atan(2.0 ** -i) * full)                     # the arctan table entry
        up = z >= 0
        dx, dy = y >> i, x >> i
        x, y = torch.where(up, x - dx, x + dx), torch.where(up, y + dy, y - dy)
        z = torch.where(up, z - step, z + step)
    return y


def cordic_sin(theta: torch.Tensor, iters: int = 16, frac_bits: int = 16) -> torch.Tensor:
    """sin(theta) (radians, float) through ``cordic_sin_phase``; same dtype as ``theta``."""
    phase = to_fixed(theta.double() / (2 * math.pi), frac_bits)
    return from_fixed(cordic_sin_phase(phase, iters, frac_bits), frac_bits).to(theta.dtype)


def fixed_div(num: torch.Tensor, den: torch.Tensor, frac_bits: int,
              int_bits: int = 1) -> torch.Tensor:
    """num / den in Q(B) for Q(B) int64 tensors, by restoring (shift-subtract) division.

    The dividend |num| 2^B is compared with |den| shifted left by k for k = int_bits + B - 1
    down to 0; where it fits, it is subtracted and quotient bit k set (int_bits + B steps,
    one per clock in a bit-serial divider). The result is |num / den| truncated to Q(B), with
    the sign put back, so it is at most one LSB (2^-B) from the exact quotient; quotients of
    2^int_bits or more saturate at 2^int_bits - 2^-B, and den = 0 gives that saturated value.
    Needs |num| < 2^(62 - B) and |den| < 2^(63 - B - int_bits).
    """
    rem = num.abs() << frac_bits
    d = den.abs()
    q = torch.zeros_like(rem)
    for k in reversed(range(int_bits + frac_bits)):
        trial = d << k
        fits = rem >= trial
        rem = torch.where(fits, rem - trial, rem)
        q = q | (fits.to(torch.int64) << k)
    return torch.where((num < 0) != (den < 0), -q, q)


def fixed_point_sinc_filters(f1: torch.Tensor, f2: torch.Tensor, window: torch.Tensor,
                             iters: int, frac_bits: int) -> torch.Tensor:
    """SincNet band-pass taps (filters, taps) computed in Q(B), returned as float32.

    ``f1``, ``f2``: (filters,) low and high cut-offs in cycles per sample; ``window``: (taps,)
    with an odd tap count. Off the centre, tap n is (sin(2 pi f2 n) - sin(2 pi f1 n)) /
    (2 pi n (f2 - f1)) -- kwskit.layers.sinc's band-pass divided by its centre tap -- and the
    centre is 1; each is then multiplied by the window. Cut-offs, 2 pi and the window are
    quantised to Q(B); the phase f n is an exact integer product; a band narrower than one LSB
    counts as one LSB.
    """
    b, taps = frac_bits, window.shape[-1]
    # the taps are even in n: computed from |n|, the filters are exactly symmetric
    # (linear phase), as a symmetric FIR stores half of them
    n = (torch.arange(taps, device=f1.device, dtype=torch.int64) - taps // 2).abs()
    q1, q2 = to_fixed(f1, b)[:, None], to_fixed(f2, b)[:, None]
    num = cordic_sin_phase(q2 * n, iters, b) - cordic_sin_phase(q1 * n, iters, b)
    band = (q2 - q1).clamp(min=1)
    den = _mul(round(2 * math.pi * (1 << b)) * n, band, b)
    bandpass = torch.where(n == 0, 1 << b, fixed_div(num, den, b))
    return from_fixed(_mul(bandpass, to_fixed(window, b), b), b).float()


# ------------------------------------------------------------------------------ cheap log
def exponent_mantissa(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e, u) with x = 2^e (1 + u), e integer-valued, u in [0, 1), for positive normal x.

    This is torch.frexp's split (e - 1, 2 m - 1) -- in hardware the float's exponent field, or
    a leading-one detector in fixed point -- written as floor(log2 x) corrected by one
    comparison each way, because torch.frexp has no ONNX export; the correction makes e exact
    wherever log2 rounds across a power of two (equal to frexp's, tested).
    """
    e = torch.floor(torch.log2(x))
    e = e - (x < torch.exp2(e)).to(x.dtype) + (x >= torch.exp2(e + 1)).to(x.dtype)
    return e, x * torch.exp2(-e) - 1


def log2_pwl(x: torch.Tensor, segments: int = 1) -> torch.Tensor:
    """log2(x) ~ e + pwl(u) for positive normal x (``exponent_mantissa``), pwl the chords of
    log2(1 + u) through ``segments + 1`` equally spaced points; exact at powers of two and
    continuous. One segment is Mitchell's log2(1 + u) ~ u (max error 0.0861)."""
    e, u = exponent_mantissa(x)
    if segments == 1:
        return e + u
    knots = torch.log2(1 + torch.arange(segments + 1, dtype=torch.float64) / segments)
    knots = knots.to(device=x.device, dtype=x.dtype)
    pos = u * segments
    seg = torch.floor(pos).clamp(0, segments - 1)
    idx = seg.to(torch.int64)
    lo, hi = knots[idx], knots[idx + 1]
    return e + lo + (pos - seg) * (hi - lo)


# ------------------------------------------------------------------------------ layers
class FixedPointSincConv1d(SincConv1d):
    """A ``SincConv1d`` whose taps come from ``fixed_point_sinc_filters``.

    The taps depend on the cut-offs only, so in eval mode they are computed once -- when the
    module enters eval mode and when weights are loaded into it (``refresh``) -- and kept in
    the non-persistent buffer ``fixed_taps``, as a chip would hold them in ROM; streaming and
    export then see constant weights. In training mode they are recomputed on every call with
    a straight-through gradient (the exact filters' gradient, the fixed-point values), so an
    approximated model can still be fine-tuned. Same parameters and state-dict keys as the
    ``SincConv1d`` it replaces.
    """

    def __init__(self, exact: SincConv1d, iters: int = 16, frac_bits: int = 16):
        super().__init__(exact.out_channels, exact.kernel_size, exact.time_stride,
                         exact.sample_rate, padding=exact.padding_mode)
        self.min_low, self.min_band = exact.min_low, exact.min_band
        self.load_state_dict(exact.state_dict())
        self.to(exact.low.device)
        self.iters, self.frac_bits = int(iters), int(frac_bits)
        self.register_buffer("fixed_taps", self.fixed_filters(), persistent=False)
        self.train(exact.training)

    @torch.no_grad()
    def fixed_filters(self) -> torch.Tensor:
        """The filterbank in fixed point, as conv1d weights (out_channels, 1, kernel_size)."""
        f1, f2 = self.band_edges()
        return fixed_point_sinc_filters(f1, f2, self.window, self.iters, self.frac_bits)[:, None]

    def refresh(self) -> None:
        """Recompute ``fixed_taps`` from the current cut-offs."""
        self.fixed_taps = self.fixed_filters().to(self.fixed_taps.device)

    def filters(self) -> torch.Tensor:
        if not self.training:
            return self.fixed_taps
        exact = super().filters()
        return exact + (self.fixed_filters().to(exact) - exact).detach()

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:
            self.refresh()
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        if hasattr(self, "fixed_taps") and not self.training:
            self.refresh()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cordic_iters={self.iters}, frac_bits={self.frac_bits}"


class Log2PwlCompression(LogCompression):
    """``log(|x| + 1)`` as ln 2 x ``log2_pwl(|x| + 1, segments)``; in training mode the value
    is the same with the exact log's gradient (straight-through)."""

    def __init__(self, segments: int = 1):
        super().__init__()
        self.segments = int(segments)

    def forward(self, x):
        approx = math.log(2.0) * log2_pwl(1 + x.abs(), self.segments)
        if not self.training:
            return approx
        exact = super().forward(x)
        return exact + (approx - exact).detach()

    def extra_repr(self) -> str:
        return f"segments={self.segments}"


# ------------------------------------------------------------------------------ the arch edit
def _int_in(spec: dict, key: str, bounds: tuple[int, int]) -> int:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise KwsError(f"approx: {key} (--{key.replace('_', '-')}) must be an integer in "
                       f"{bounds[0]}..{bounds[1]}, got {value!r}")
    return value


def approx_spec(spec: dict | None = None, **options) -> dict:
    """The complete, checked approximation spec: ``DEFAULT_SPEC`` updated by ``spec`` and
    ``options`` (None values skipped). KwsError names the first bad field."""
    given = {**(spec or {}), **{k: v for k, v in options.items() if v is not None}}
    unknown = sorted(set(given) - set(DEFAULT_SPEC))
    if unknown:
        raise KwsError(f"approx: unknown field(s) {', '.join(unknown)} "
                       f"(known: {', '.join(DEFAULT_SPEC)})")
    out = {**DEFAULT_SPEC, **given}
    for key, modes in (("sinc", SINC_MODES), ("log", LOG_MODES)):
        if out[key] not in modes:
            raise KwsError(f"approx: {key} (--{key}) must be one of {', '.join(modes)}, "
                           f"got {out[key]!r}")
    if out["sinc"] == "exact" and out["log"] == "exact":
        raise KwsError("approx: --sinc exact and --log exact approximate nothing; "
                       "choose --sinc cordic and/or --log log2pwl")
    _int_in(out, "cordic_iters", ITERS_RANGE)
    _int_in(out, "frac_bits", FRAC_BITS_RANGE)
    _int_in(out, "log_segments", SEGMENTS_RANGE)
    return out


def _children_of_type(root: nn.Module, kind: type):
    return [(parent, name, child) for parent in root.modules()
            for name, child in parent.named_children() if type(child) is kind]


def apply_approx(pipeline: nn.Module, spec: dict) -> nn.Module:
    """``pipeline`` with its exact ``SincConv1d`` / ``LogCompression`` layers replaced by
    ``FixedPointSincConv1d`` / ``Log2PwlCompression`` as ``spec`` (``approx_spec``) says.

    KwsError when the model has no SincConv1d layer (only SincConv models are approximated).
    """
    spec = approx_spec(spec)
    sincs = _children_of_type(pipeline, SincConv1d)
    if not sincs:
        raise KwsError("approx: the model has no SincConv1d layer (the sinc and log "
                       "approximations apply to SincConv models: sincconv_dsconv, "
                       "sincconv_gdsconv)")
    if spec["sinc"] == "cordic":
        for parent, name, layer in sincs:
            setattr(parent, name, FixedPointSincConv1d(layer, spec["cordic_iters"],
                                                       spec["frac_bits"]))
    if spec["log"] == "log2pwl":
        for parent, name, layer in _children_of_type(pipeline, LogCompression):
            replacement = Log2PwlCompression(spec["log_segments"])
            replacement.train(layer.training)
            setattr(parent, name, replacement)
    return pipeline
