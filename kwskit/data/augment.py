"""Seeded data augmentation: waveform (numpy, per example) and SpecAugment (torch, per batch).

Waveform augmentations run in this order on one float32 16 kHz clip, each with its own
probability, all random choices coming from the ``np.random.Generator`` passed in:

1. speed perturbation -- resample by a factor (soxr), so duration AND pitch change together
   (factor 1.1 = 10 % faster and 10 % higher), then centre pad/crop to the input length.
   This is the Kaldi-style perturbation of Ko et al., Interspeech 2015 (factors 0.9/1.0/1.1).
2. pitch shift -- resample by 2**(semitones/12) (pitch and duration change), then time-stretch
   back to the original duration with WSOLA (waveform-similarity overlap-add, Verhelst and
   Roelands, ICASSP 1993): 32 ms Hann grains at 50 % overlap, each placed within +-10 ms where it
   best continues the previous grain. Duration is kept; pitch AND formants move (no formant
   correction), the way a tape sped up and re-timed sounds. Mild grain artefacts are possible.
3. gain -- multiply by 10**(dB/20).
4. time shift -- move by a whole number of samples drawn uniformly in +-shift_ms, zero fill
   (as TensorFlow's Speech Commands recipe, Warden 2018, does with time_shift_ms=100).
5. background noise -- add a random excerpt of one of the long noise arrays, scaled either
   * ``noise_mode="volume"``: by a factor drawn uniformly in ``noise_volume`` (TF's recipe:
     background_frequency=0.8, background_volume=0.1 -> noise_prob=0.8, noise_volume=(0, 0.1)),
   * ``noise_mode="snr"``: to an SNR drawn uniformly in ``noise_snr_db`` (dB). With
     ``noise_snr_over="clip"`` (the default) it is the power of the whole (shifted) clip over
     that of the scaled noise excerpt, which puts a short word's own speech 3-6 dB above the
     drawn SNR; ``"active"`` measures it as the stream builder (kwskit.data.streams) measures a
     word's: the clip's power over its active part (``speech_bounds``) over the excerpt's power
     in the same samples. A silent clip has no SNR; it falls back to the volume rule.
   Silence examples (``silence=True``) always get noise, at a volume drawn in
   ``[0, silence_volume]`` (TF draws in [0, 1]).

The result keeps the input length, is float32, finite and clipped to [-1, 1]. With
``enabled=False`` (or every probability 0) the clip comes back unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import soxr
import torch
from torch import nn

from kwskit import SAMPLE_RATE
from kwskit.data.streams import speech_bounds
from kwskit.errors import KwsError


# --------------------------------------------------------------------------- config
@dataclass
class AugmentConfig:
    """Augmentation settings; defaults follow TF's Speech Commands recipe (noise + shift) with
    the extra augmentations off, except that silence examples cover -80..-10 dBFS
    (``silence_rms_dbfs``; null restores TF's). Ranges are (low, high), drawn uniformly."""

    enabled: bool = True  # master switch (off -> identity, e.g. for evaluation)
    noise_prob: float = 0.8  # chance a clip gets background noise
    noise_mode: str = "volume"  # "volume" | "snr"
    noise_volume: tuple = (0.0, 0.1)  # amplitude factor on the noise, volume mode
    noise_snr_db: tuple = (5.0, 20.0)  # dB, snr mode
    noise_snr_over: str = "clip"  # snr mode: "clip" (whole clip) | "active" (the word, as streams)
    silence_volume: float = 1.0  # noise factor upper bound for silence examples
    # dBFS range of silence examples' RMS (-80..-10: a quiet room to loud noise); each silence
    # example is scaled to an RMS drawn uniformly in dB, whatever its noise file's own level
    # (GSC's are all quiet). None keeps the file's level times silence_volume (TF's recipe).
    silence_rms_dbfs: tuple | None = (-80.0, -10.0)
    shift_prob: float = 1.0
    shift_ms: float = 100.0  # shift drawn in [-shift_ms, +shift_ms]
    gain_prob: float = 0.0
    gain_db: tuple = (-6.0, 6.0)
    speed_prob: float = 0.0
    speed_range: tuple = (0.9, 1.1)  # factor > 1 = faster and higher
    pitch_prob: float = 0.0
    pitch_semitones: tuple = (-2.0, 2.0)
    spec_prob: float = 0.0  # SpecAugment: chance an example of a batch is masked
    spec_freq_masks: int = 2
    spec_freq_width: int = 7  # max bins per frequency mask
    spec_time_masks: int = 2
    spec_time_width: int = 10  # max frames per time mask

    def __post_init__(self):
        self._normalise()
        self.validate()

    def _normalise(self) -> None:
        for f in dataclasses.fields(self):  # YAML gives lists; ranges are kept as tuples
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))

    @classmethod
    def from_dict(cls, d: dict | None, prefix: str = "augment") -> "AugmentConfig":
        """Build from a config mapping (missing keys keep their defaults); unknown keys and
        bad values raise ``KwsError`` naming ``<prefix>.<key>``."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise KwsError(f"{prefix}: must be a mapping of settings, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise KwsError(f"{prefix}.{key}: unknown key (known: {', '.join(known)})")
        obj = cls.__new__(cls)  # skip __post_init__ so errors carry ``prefix``
        for f in dataclasses.fields(cls):
            setattr(obj, f.name, d.get(f.name, f.default))
        obj._normalise()
        obj.validate(prefix)
        return obj

    def to_dict(self) -> dict:
        """Plain dict (ranges as lists) for saving with a run."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def validate(self, prefix: str = "augment") -> None:
        def bad(name, why):
            return KwsError(f"{prefix}.{name}: {why}, got {getattr(self, name)!r}")

        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not isinstance(self.enabled, bool):
            raise bad("enabled", "must be true or false")
        for name in ("noise_prob", "shift_prob", "gain_prob", "speed_prob", "pitch_prob",
                     "spec_prob"):
            v = getattr(self, name)
            if not number(v) or not 0.0 <= v <= 1.0:
                raise bad(name, "must be in [0, 1]")
        if self.noise_mode not in ("volume", "snr"):
            raise bad("noise_mode", "must be 'volume' or 'snr'")
        if self.noise_snr_over not in ("active", "clip"):
            raise bad("noise_snr_over", "must be 'active' or 'clip'")
        limits = {"noise_volume": (0.0, 10.0), "noise_snr_db": (-30.0, 100.0),
                  "gain_db": (-40.0, 40.0), "speed_range": (0.5, 2.0),
                  "pitch_semitones": (-12.0, 12.0)}
        for name, (lo, hi) in limits.items():
            v = getattr(self, name)
            if (not isinstance(v, tuple) or len(v) != 2 or not all(number(e) for e in v)
                    or v[0] > v[1]):
                raise bad(name, "must be a [low, high] pair of numbers with low <= high")
            if v[0] < lo or v[1] > hi:
                raise bad(name, f"must lie within [{lo:g}, {hi:g}]")
        v = self.silence_rms_dbfs
        if v is not None and (not isinstance(v, tuple) or len(v) != 2
                              or not all(number(e) for e in v) or v[0] > v[1]
                              or v[0] < -120 or v[1] > 0):
            raise bad("silence_rms_dbfs", "must be null or a [low, high] pair of dBFS values "
                      "in [-120, 0] with low <= high")
        for name in ("silence_volume", "shift_ms"):
            v = getattr(self, name)
            if not number(v) or v < 0:
                raise bad(name, "must be a number >= 0")
        for name in ("spec_freq_masks", "spec_freq_width", "spec_time_masks", "spec_time_width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(name, "must be an integer >= 0")


# --------------------------------------------------------------------------- primitives
def time_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """Delay by ``shift`` samples (advance if negative), zero fill, same length."""
    n = len(x)
    y = np.zeros_like(x)
    if shift >= 0:
        y[shift:] = x[: max(n - shift, 0)]
    else:
        y[: max(n + shift, 0)] = x[-shift:]
    return y


def _centre_fix(x: np.ndarray, n: int) -> np.ndarray:
    """Pad with zeros on both sides, or crop centred, to ``n`` samples (keeps the word where
    it was, unlike end padding)."""
    if len(x) >= n:
        start = (len(x) - n) // 2
        return x[start : start + n]
    left = (n - len(x)) // 2
    return np.pad(x, (left, n - len(x) - left))


def _resample_by(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``x`` ``factor`` times faster: about len(x)/factor samples, pitch times factor."""
    return soxr.resample(x.astype(np.float32), factor, 1.0, quality="HQ").astype(np.float32)


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Speed by ``factor`` (duration / factor, pitch * factor), same length as ``x``."""
    return _centre_fix(_resample_by(x, factor), len(x))


def wsola_stretch(x: np.ndarray, out_len: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Time-stretch ``x`` to ``out_len`` samples without changing pitch (WSOLA).

    Output grain k (32 ms Hann, hop 16 ms) is taken from the input near the time that maps to
    it, shifted by up to +-10 ms to the offset whose cross-correlation with the natural
    continuation of grain k-1 is largest, so consecutive grains join in phase.
    """
    frame = 2 * int(round(0.016 * sample_rate))
    hop = frame // 2
    tol = int(round(0.010 * sample_rate))
    rate = len(x) / max(out_len, 1)  # input samples per output sample
    win = np.hanning(frame + 1)[:-1].astype(np.float32)  # periodic: grains sum to 1 at hop
    pad = frame + tol
    xp = np.pad(x.astype(np.float32), (pad, pad + 2 * frame + 2 * tol + int(hop * rate)))
    n_grains = out_len // hop + 2
    out = np.zeros(n_grains * hop + frame, dtype=np.float32)
    prev = -1
    for k in range(n_grains):
        nominal = pad + int(round(k * hop * rate)) - frame // 2
        if prev < 0:
            start = nominal
        else:
            natural = xp[prev + hop : prev + hop + frame]
            region = xp[nominal - tol : nominal + tol + frame]
            corr = np.correlate(region, natural, mode="valid")
            start = nominal - tol + int(np.argmax(corr))
        out[k * hop : k * hop + frame] += xp[start : start + frame] * win
        prev = start
    # Output grain k is centred on output sample k*hop, i.e. index k*hop + frame//2 in ``out``.
    return out[frame // 2 : frame // 2 + out_len]


def pitch_shift(x: np.ndarray, semitones: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Shift pitch by ``semitones`` keeping duration: resample, then WSOLA back to len(x)."""
    moved = _resample_by(x, 2.0 ** (semitones / 12.0))
    return wsola_stretch(moved, len(x), sample_rate)


def noise_excerpt(noise: np.ndarray, offset: int, n: int) -> np.ndarray:
    """``n`` samples of ``noise`` from ``offset``, wrapping round when it runs out."""
    if len(noise) >= offset + n:
        return noise[offset : offset + n]
    idx = (offset + np.arange(n)) % len(noise)
    return noise[idx]


# --------------------------------------------------------------------------- waveform
@dataclass
class AugmentDraw:
    """The random choices for one clip (None = that augmentation not applied)."""

    speed: float | None = None
    pitch: float | None = None  # semitones
    gain_db: float | None = None
    shift: int = 0  # samples, positive = later
    noise: int | None = None  # index into the noise list
    noise_offset: int = 0  # samples into that noise
    noise_volume: float | None = None  # amplitude factor (volume mode, silence, silent clip)
    noise_snr_db: float | None = None  # target SNR (snr mode)
    target_rms: float | None = None  # silence examples: the RMS the clip is scaled to


class WaveAugment:
    """Per-example waveform augmentation (see module doc for the order and methods).

    ``aug(x, rng)`` draws the random choices with ``rng`` (``draw``) and applies them
    (``apply``); the same seed gives the same output. ``noises`` are long float32 mono arrays
    at ``sample_rate`` (e.g. GSC's ``_background_noise_``); with none, noise is skipped.
    """

    def __init__(self, cfg: AugmentConfig | dict | None = None,
                 noises: list[np.ndarray] | None = None, sample_rate: int = SAMPLE_RATE):
        self.cfg = cfg if isinstance(cfg, AugmentConfig) else AugmentConfig.from_dict(cfg)
        self.sample_rate = sample_rate
        self.noises = []
        for i, nz in enumerate(noises or []):
            nz = np.asarray(nz, dtype=np.float32)
            if nz.ndim != 1 or len(nz) == 0 or not np.all(np.isfinite(nz)):
                raise KwsError(f"augment noise #{i}: must be a non-empty finite 1-D array, "
                               f"got shape {nz.shape}")
            self.noises.append(nz)

    def draw(self, rng: np.random.Generator, num_samples: int, silence: bool = False) -> AugmentDraw:
        """All random choices for a clip of ``num_samples`` samples."""
        c, d = self.cfg, AugmentDraw()
        if not c.enabled:
            return d
        if c.speed_prob > 0 and rng.random() < c.speed_prob:
            d.speed = float(rng.uniform(*c.speed_range))
        if c.pitch_prob > 0 and rng.random() < c.pitch_prob:
            d.pitch = float(rng.uniform(*c.pitch_semitones))
        if c.gain_prob > 0 and rng.random() < c.gain_prob:
            d.gain_db = float(rng.uniform(*c.gain_db))
        max_shift = int(round(c.shift_ms * self.sample_rate / 1000.0))
        if c.shift_prob > 0 and max_shift > 0 and rng.random() < c.shift_prob:
            d.shift = int(rng.integers(-max_shift, max_shift + 1))
        if self.noises and (silence or (c.noise_prob > 0 and rng.random() < c.noise_prob)):
            d.noise = int(rng.integers(len(self.noises)))
            length = len(self.noises[d.noise])
            # whole excerpts when the noise is long enough (no wrap-around click), as TF does
            d.noise_offset = int(rng.integers(length - num_samples + 1 if length >= num_samples
                                              else length))
            if silence:
                d.noise_volume = float(rng.uniform(0.0, c.silence_volume))
            elif c.noise_mode == "snr":
                d.noise_snr_db = float(rng.uniform(*c.noise_snr_db))
                d.noise_volume = float(rng.uniform(*c.noise_volume))  # used if clip is silent
            else:
                d.noise_volume = float(rng.uniform(*c.noise_volume))
        if silence and c.silence_rms_dbfs is not None:  # drawn last: older draws stay the same
            d.target_rms = float(10.0 ** (rng.uniform(*c.silence_rms_dbfs) / 20.0))
        return d

    def _snr_span(self, y: np.ndarray) -> tuple[int, int]:
        """The samples an SNR is measured over: the active part, or the whole clip."""
        if self.cfg.noise_snr_over == "active":
            bounds = speech_bounds(y, self.sample_rate)
            if bounds is not None:
                return bounds
        return 0, len(y)

    def apply(self, x: np.ndarray, d: AugmentDraw) -> np.ndarray:
        """Apply the choices ``d`` to ``x`` (1-D); returns a new float32 array, same length."""
        x = np.asarray(x)
        if x.ndim != 1:
            raise ValueError(f"WaveAugment: expected a 1-D clip, got shape {x.shape}")
        y = np.array(x, dtype=np.float32)
        n = len(y)
        if d.speed is not None:
            y = speed_perturb(y, d.speed)
        if d.pitch is not None:
            y = pitch_shift(y, d.pitch, self.sample_rate)
        if d.gain_db is not None:
            y = y * np.float32(10.0 ** (d.gain_db / 20.0))
        if d.shift:
            y = time_shift(y, d.shift)
        if d.noise is not None:
            nz = noise_excerpt(self.noises[d.noise], d.noise_offset, n)
            scale = d.noise_volume
            if d.noise_snr_db is not None:
                a, b = self._snr_span(y)
                p_sig = float(np.mean(y[a:b].astype(np.float64) ** 2))
                p_noise = float(np.mean(nz[a:b].astype(np.float64) ** 2))
                if p_sig > 0 and p_noise > 0:
                    scale = math.sqrt(p_sig / (p_noise * 10.0 ** (d.noise_snr_db / 10.0)))
            y = y + np.float32(scale) * nz
        if d.target_rms is not None:
            rms = math.sqrt(float(np.mean(y.astype(np.float64) ** 2)))
            if rms > 0:  # digital silence stays silent
                y = y * np.float32(d.target_rms / rms)
        if not np.isfinite(y).all():  # a check is cheaper than nan_to_num's copy per clip
            y = np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=-1.0)
        return np.clip(y, -1.0, 1.0, out=y).astype(np.float32, copy=False)  # y is our own copy

    def __call__(self, x: np.ndarray, rng: np.random.Generator, silence: bool = False) -> np.ndarray:
        return self.apply(x, self.draw(rng, len(x), silence))


# --------------------------------------------------------------------------- SpecAugment
class SpecAugment(nn.Module):
    """SpecAugment masking (Park et al., Interspeech 2019), no time warping.

    Each example, with probability ``p``, gets ``freq_masks`` bands of width drawn uniformly in
    [0, freq_width] bins and ``time_masks`` spans of width in [0, time_width] frames, each at a
    uniform position, set to ``mask_value`` (a float, or "mean" for the example's own mean;
    note 0 is loud, not silent, for un-normalised log-mel). Active only in training mode; the
    whole batch is drawn at once. Input (B, F, T) or (B, C, F, T) (same mask on every channel).
    Randomness comes from ``generator``, or a private one seeded with ``seed``, else torch's
    global generator.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 7, time_masks: int = 2,
                 time_width: int = 10, p: float = 1.0, mask_value: float | str = 0.0,
                 generator: torch.Generator | None = None, seed: int | None = None):
        super().__init__()
        for name, v in (("freq_masks", freq_masks), ("freq_width", freq_width),
                        ("time_masks", time_masks), ("time_width", time_width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise KwsError(f"specaugment.{name}: must be an integer >= 0, got {v!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise KwsError(f"specaugment.p: must be in [0, 1], got {p!r}")
        if mask_value != "mean" and (isinstance(mask_value, bool)
                                     or not isinstance(mask_value, (int, float))):
            raise KwsError(f"specaugment.mask_value: must be a number or 'mean', got {mask_value!r}")
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.p, self.mask_value = float(p), mask_value
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator

    @classmethod
    def from_dict(cls, d: dict | None, seed: int | None = None,
                  prefix: str = "specaugment") -> "SpecAugment":
        """From a config mapping of constructor arguments (freq_masks, freq_width, time_masks,
        time_width, p, mask_value); an unknown key raises ``KwsError`` naming it."""
        d = dict(d or {})
        known = ("freq_masks", "freq_width", "time_masks", "time_width", "p", "mask_value")
        for key in d:
            if key not in known:
                raise KwsError(f"{prefix}.{key}: unknown key (known: {', '.join(known)})")
        return cls(**d, seed=seed)

    @classmethod
    def from_config(cls, cfg: AugmentConfig, **kw) -> "SpecAugment":
        """From an :class:`AugmentConfig` (``spec_*`` fields); p=0 when augmentation is off."""
        return cls(cfg.spec_freq_masks, cfg.spec_freq_width, cfg.spec_time_masks,
                   cfg.spec_time_width, p=cfg.spec_prob if cfg.enabled else 0.0, **kw)

    def _spans(self, batch: int, size: int, count: int, width: int) -> torch.Tensor:
        """(batch, size) bool: union of ``count`` random spans of width <= ``width``."""
        if count == 0 or width == 0 or size == 0:
            return torch.zeros(batch, size, dtype=torch.bool)
        g = self.generator
        widths = torch.randint(0, min(width, size) + 1, (batch, count), generator=g)
        starts = (torch.rand(batch, count, generator=g) * (size - widths + 1)).long()
        pos = torch.arange(size)
        inside = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])
        return inside.any(dim=1)

    def draw_masks(self, batch: int, n_freq: int, n_time: int) -> torch.Tensor:
        """(batch, n_freq, n_time) bool mask, True where features are replaced."""
        freq = self._spans(batch, n_freq, self.freq_masks, self.freq_width)
        time = self._spans(batch, n_time, self.time_masks, self.time_width)
        chosen = torch.rand(batch, generator=self.generator) < self.p
        return (freq[:, :, None] | time[:, None, :]) & chosen[:, None, None]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return feats
        if feats.dim() not in (3, 4):
            raise ValueError(f"SpecAugment: expected (B, F, T) or (B, C, F, T), "
                             f"got shape {tuple(feats.shape)}")
        b, f, t = feats.shape[0], feats.shape[-2], feats.shape[-1]
        mask = self.draw_masks(b, f, t).to(feats.device)
        if feats.dim() == 4:
            mask = mask[:, None]
        if self.mask_value == "mean":
            fill = feats.mean(dim=tuple(range(1, feats.dim())), keepdim=True)
        else:
            fill = torch.tensor(float(self.mask_value), dtype=feats.dtype, device=feats.device)
        return torch.where(mask, fill, feats)

    def extra_repr(self) -> str:
        return (f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, "
                f"time_masks={self.time_masks}, time_width={self.time_width}, p={self.p}, "
                f"mask_value={self.mask_value!r}")
