"""Waveform augmentation and SpecAugment: each does what it says, seeded, switchable."""

import numpy as np
import pytest
import torch

from kwskit.data.augment import (AugmentConfig, SpecAugment, WaveAugment, pitch_shift,
                                 speed_perturb)
from kwskit.errors import KwsError

SR = 16000
T = np.arange(SR) / SR
OFF = dict(noise_prob=0.0, shift_prob=0.0, gain_prob=0.0, speed_prob=0.0, pitch_prob=0.0)


def _noise(seed=0, n=5 * SR):
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _sine(freq=440.0, amp=0.3):
    return (amp * np.sin(2 * np.pi * freq * T)).astype(np.float32)


def _burst(freq=1000.0, start=0.25, stop=0.75):
    x = np.zeros(SR, np.float32)
    a, b = int(start * SR), int(stop * SR)
    x[a:b] = 0.5 * np.sin(2 * np.pi * freq * T[a:b])
    return x


def _dominant_hz(x):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 8 * len(x)))
    return np.argmax(spec) * SR / (8 * len(x))


def _burst_seconds(x, thresh=0.1):
    idx = np.nonzero(np.abs(x) > thresh)[0]
    return (idx[-1] - idx[0]) / SR


def _aug(noises=None, **kw):
    return WaveAugment(AugmentConfig(**{**OFF, **kw}), noises)


# ------------------------------------------------------------------ config
def test_config_defaults_and_roundtrip():
    c = AugmentConfig()
    assert c.noise_prob == 0.8 and c.noise_volume == (0.0, 0.1) and c.shift_ms == 100.0
    c2 = AugmentConfig.from_dict({"noise_mode": "snr", "noise_snr_db": [0, 10], "gain_prob": 0.5})
    assert c2.noise_snr_db == (0, 10) and c2.gain_prob == 0.5 and c2.shift_prob == 1.0
    assert AugmentConfig.from_dict(c2.to_dict()) == c2
    assert AugmentConfig.from_dict(None) == AugmentConfig()


@pytest.mark.parametrize("d,msg", [
    ({"noise_prob": 1.5}, r"^augment\.noise_prob: must be in \[0, 1\], got 1\.5$"),
    ({"noise_probability": 0.5}, r"^augment\.noise_probability: unknown key"),
    ({"noise_mode": "db"}, r"^augment\.noise_mode: must be 'volume' or 'snr'"),
    ({"noise_snr_over": "word"}, r"^augment\.noise_snr_over: must be 'active' or 'clip'"),
    ({"gain_db": [6, -6]}, r"^augment\.gain_db: must be a \[low, high\] pair"),
    ({"speed_range": [0.9]}, r"^augment\.speed_range: must be a \[low, high\] pair"),
    ({"speed_range": [0.1, 1.0]}, r"^augment\.speed_range: must lie within \[0\.5, 2\]"),
    ({"shift_ms": -5}, r"^augment\.shift_ms: must be a number >= 0"),
    ({"enabled": "yes"}, r"^augment\.enabled: must be true or false"),
    ({"spec_freq_masks": 1.5}, r"^augment\.spec_freq_masks: must be an integer >= 0"),
])
def test_config_errors_name_the_field(d, msg):
    with pytest.raises(KwsError, match=msg):
        AugmentConfig.from_dict(d)


def test_config_error_prefix_and_direct_construction():
    with pytest.raises(KwsError, match=r"^train\.augment\.pitch_prob"):
        AugmentConfig.from_dict({"pitch_prob": -0.1}, prefix="train.augment")
    with pytest.raises(KwsError, match=r"^augment\.noise_volume"):
        AugmentConfig(noise_volume=(-1.0, 0.1))
    with pytest.raises(KwsError, match=r"^augment: must be a mapping"):
        AugmentConfig.from_dict([1, 2])
    with pytest.raises(KwsError, match=r"augment noise #1"):
        WaveAugment(None, [_noise(), np.zeros((2, 10), np.float32)])


# ------------------------------------------------------------------ identity and determinism
def test_disabled_is_exact_identity():
    x = _sine() + 0.01 * _noise(1, SR)
    rng = np.random.default_rng(0)
    for aug in (WaveAugment({"enabled": False}, [_noise()]),
                WaveAugment(AugmentConfig(**OFF), [_noise()])):
        for silence in (False, True) if not aug.cfg.enabled else (False,):
            y = aug(x, rng, silence=silence)
            assert y.dtype == np.float32 and np.array_equal(y, x) and y is not x


def test_same_seed_same_output():
    cfg = AugmentConfig(gain_prob=0.5, speed_prob=0.5, pitch_prob=0.5, noise_mode="snr")
    aug = WaveAugment(cfg, [_noise(0), _noise(1)])
    x = _burst()
    a = [aug(x, np.random.default_rng(7)) for _ in range(2)]
    b = aug(x, np.random.default_rng(8))
    assert np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], b)


def test_output_is_float32_finite_clipped_same_length():
    aug = _aug([_noise()], gain_prob=1.0, gain_db=(20.0, 20.0), noise_prob=1.0)
    x = _sine(amp=0.9).astype(np.float64)  # float64 in is fine
    x[100] = np.nan
    y = aug(x, np.random.default_rng(0))
    assert y.dtype == np.float32 and len(y) == SR
    assert np.all(np.isfinite(y)) and y.max() <= 1.0 and y.min() >= -1.0
    assert np.abs(y).max() == 1.0  # +20 dB on a 0.9 sine really clips


# ------------------------------------------------------------------ each augmentation
def test_noise_snr_mode_hits_the_drawn_snr():
    aug = _aug([_noise(0), _noise(1)], noise_prob=1.0, noise_mode="snr", noise_snr_db=(3.0, 15.0))
    x = _sine(amp=0.2)
    rng = np.random.default_rng(1)
    for _ in range(5):
        d = aug.draw(rng, len(x))
        y = aug.apply(x, d)
        snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y - x).astype(np.float64) ** 2))
        assert 3.0 <= d.noise_snr_db <= 15.0
        assert abs(snr - d.noise_snr_db) < 0.05, (snr, d.noise_snr_db)


@pytest.mark.parametrize("over,span", [("active", (0.25, 0.75)), ("clip", (0.0, 1.0))])
def test_noise_snr_is_measured_where_the_stream_measures_it(over, span):
    # a word filling half the clip: over its active part (as kwskit.data.streams measures a
    # word's SNR) the drawn SNR holds there; over the whole clip it holds on the clip's power,
    # so the word's own SNR comes out 3 dB higher
    aug = _aug([_noise(0)], noise_prob=1.0, noise_mode="snr", noise_snr_db=(10.0, 10.0),
               noise_snr_over=over)
    x = _burst()
    y = aug.apply(x, aug.draw(np.random.default_rng(4), len(x)))
    a, b = (int(t * SR) for t in span)
    on = slice(int(0.25 * SR), int(0.75 * SR))
    word_snr = 10 * np.log10(np.mean(x[on].astype(np.float64) ** 2)
                             / np.mean((y - x)[on].astype(np.float64) ** 2))
    span_snr = 10 * np.log10(np.mean(x[a:b].astype(np.float64) ** 2)
                             / np.mean((y - x)[a:b].astype(np.float64) ** 2))
    assert abs(span_snr - 10.0) < 0.2, span_snr
    assert abs(word_snr - (10.0 if over == "active" else 13.0)) < 0.2, word_snr


def test_noise_volume_mode_adds_scaled_excerpt():
    noise = _noise(2, 3 * SR)
    aug = _aug([noise], noise_prob=1.0, noise_volume=(0.0, 0.1))
    x = _sine(amp=0.2)
    rng = np.random.default_rng(2)
    vols = []
    for _ in range(20):
        d = aug.draw(rng, len(x))
        y = aug.apply(x, d)
        excerpt = np.resize(np.roll(noise, -d.noise_offset), SR)  # wraps like noise_excerpt
        assert np.allclose(y - x, d.noise_volume * excerpt, atol=1e-6)
        vols.append(d.noise_volume)
    assert 0.0 <= min(vols) and max(vols) <= 0.1 and np.std(vols) > 0.01
    # a noise shorter than the clip is tiled round from the drawn offset
    short = _noise(3, SR // 3)
    aug = _aug([short], noise_prob=1.0, noise_volume=(0.05, 0.05))
    d = aug.draw(rng, SR)
    expected = 0.05 * np.resize(np.roll(short, -d.noise_offset), SR)
    assert np.allclose(aug.apply(np.zeros(SR, np.float32), d), expected, atol=1e-6)


def test_noise_probability_and_silence():
    aug = _aug([_noise()], noise_prob=0.8, silence_volume=0.5)
    rng = np.random.default_rng(3)
    hits = sum(aug.draw(rng, SR).noise is not None for _ in range(1000))
    assert 740 <= hits <= 860  # 0.8 +- ~4.5 sigma
    z = np.zeros(SR, np.float32)
    aug0 = _aug([_noise()], noise_prob=0.0, silence_volume=0.5, silence_rms_dbfs=None)  # TF's
    for _ in range(20):
        d = aug0.draw(rng, SR, silence=True)
        assert d.noise is not None and 0.0 <= d.noise_volume <= 0.5
        nz = np.resize(np.roll(aug0.noises[0], -d.noise_offset), SR)
        assert np.allclose(aug0.apply(z, d), d.noise_volume * nz, atol=1e-6)
    # no noise arrays: noise silently skipped, clip untouched
    assert np.array_equal(_aug([], noise_prob=1.0)(_sine(), rng), _sine())


def test_silence_follows_the_configured_rms_range():
    """Silence examples are scaled to an RMS drawn in silence_rms_dbfs, whatever the noise
    file's level; other clips and the draws of older configs are untouched."""
    quiet = 0.003 * _noise(4)  # GSC's noise files are this quiet (RMS 0.002-0.006)
    aug = _aug([quiet], noise_prob=0.0, silence_rms_dbfs=(-80.0, -10.0))
    rng = np.random.default_rng(5)
    levels = []
    for _ in range(300):
        y = aug(np.zeros(SR, np.float32), rng, silence=True)
        levels.append(20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2))))
    levels = np.array(levels)
    assert levels.min() >= -80.0 - 0.01 and levels.max() <= -10.0 + 0.2  # clipping aside
    assert levels.min() < -70 and levels.max() > -15  # the whole range, loud rooms included
    assert np.array_equal(aug(_sine(), np.random.default_rng(1)), _sine())  # not silence
    old = _aug([quiet], noise_prob=0.8)
    new = _aug([quiet], noise_prob=0.8, silence_rms_dbfs=(-40.0, -20.0))
    a, b = old.draw(np.random.default_rng(7), SR), new.draw(np.random.default_rng(7), SR)
    assert a == b  # keyword clips draw exactly as before
    with pytest.raises(KwsError, match="augment.silence_rms_dbfs"):
        AugmentConfig.from_dict({"silence_rms_dbfs": [-10, -20]})
    with pytest.raises(KwsError, match="augment.silence_rms_dbfs"):
        AugmentConfig.from_dict({"silence_rms_dbfs": [-20, 5]})


def test_shift_moves_impulse_by_drawn_amount():
    aug = _aug(shift_prob=1.0, shift_ms=100.0)
    x = np.zeros(SR, np.float32)
    x[8000] = 0.5
    rng = np.random.default_rng(4)
    shifts = []
    for _ in range(30):
        d = aug.draw(rng, SR)
        y = aug.apply(x, d)
        assert abs(d.shift) <= 1600
        assert np.flatnonzero(y).tolist() == [8000 + d.shift]
        shifts.append(d.shift)
    assert min(shifts) < -100 and max(shifts) > 100  # both directions, spread out
    # zero fill at the edge the clip moved away from
    ramp = np.linspace(0.1, 0.9, SR).astype(np.float32)
    y = aug.apply(ramp, type(d)(shift=-200))
    assert np.array_equal(y[:-200], ramp[200:]) and not y[-200:].any()


def test_gain_scales():
    aug = _aug(gain_prob=1.0, gain_db=(-6.0, -6.0))
    x = _sine()
    y = aug(x, np.random.default_rng(5))
    assert np.allclose(y, x * 10 ** (-6 / 20), atol=1e-7)


@pytest.mark.parametrize("factor", [0.85, 1.2])
def test_speed_changes_duration_and_pitch(factor):
    x = _burst(1000.0, 0.25, 0.75)  # 0.5 s
    y = speed_perturb(x, factor)
    assert len(y) == SR and y.dtype == np.float32
    assert abs(_burst_seconds(y) - 0.5 / factor) < 0.005
    assert abs(_dominant_hz(y) - 1000.0 * factor) < 3.0
    # via WaveAugment with a fixed range
    aug = _aug(speed_prob=1.0, speed_range=(factor, factor))
    assert np.array_equal(aug(x, np.random.default_rng(0)), y)


@pytest.mark.parametrize("semitones", [-3.0, 2.0])
def test_pitch_changes_frequency_keeps_duration(semitones):
    ratio = 2 ** (semitones / 12)
    x = _sine(440.0)
    y = pitch_shift(x, semitones, SR)
    assert len(y) == SR and y.dtype == np.float32
    mid = slice(2000, SR - 2000)
    assert abs(_dominant_hz(y[mid]) / (440.0 * ratio) - 1) < 0.003
    assert abs(np.sqrt(np.mean(y[mid] ** 2)) - 0.3 / np.sqrt(2)) < 0.01  # no level change
    b = pitch_shift(_burst(1000.0), semitones, SR)
    assert abs(_burst_seconds(b) - 0.5) < 0.04  # duration kept (speed would give 0.5/ratio)
    assert abs(_dominant_hz(b) / (1000.0 * ratio) - 1) < 0.005


# ------------------------------------------------------------------ SpecAugment
def _feats(b=4, f=40, t=98):
    return torch.randn(b, 1, f, t, generator=torch.Generator().manual_seed(0)) + 5.0


def test_specaugment_eval_and_p0_are_identity():
    x = _feats()
    sa = SpecAugment(seed=0).eval()
    assert sa(x) is x
    sa0 = SpecAugment(p=0.0, seed=0).train()
    assert sa0(x) is x


def test_specaugment_masks_expected_bins():
    b, f, t, w = 4000, 40, 98, 8
    x = torch.ones(b, 1, f, t)
    sa = SpecAugment(freq_masks=1, freq_width=w, time_masks=0, seed=1).train()
    y = sa(x)
    assert y.shape == x.shape
    rows = (y[:, 0] == 0).all(dim=2)  # (b, f): whole frequency rows masked
    assert torch.equal((y[:, 0] == 0).any(dim=2), rows)  # nothing masked partially
    widths = rows.sum(dim=1)
    assert widths.max() <= w and widths.min() == 0
    for i in range(50):  # one mask -> one contiguous band
        idx = torch.nonzero(rows[i]).flatten()
        if len(idx):
            assert idx[-1] - idx[0] + 1 == len(idx)
    # widths uniform in 0..w -> mean w/2 (std of the mean ~0.04 here)
    assert abs(widths.float().mean().item() - w / 2) < 0.2
    counts = torch.bincount(widths, minlength=w + 1).float() / b
    assert torch.all((counts - 1 / (w + 1)).abs() < 0.03)


def test_specaugment_time_masks_and_unmasked_untouched():
    x = _feats(b=64)
    sa = SpecAugment(freq_masks=0, time_masks=2, time_width=10, seed=2).train()
    y = sa(x)
    masked = y == 0
    cols = masked[:, 0].all(dim=1)  # (b, t)
    assert torch.equal(masked[:, 0].any(dim=1), cols)  # whole frames only
    assert (cols.sum(dim=1) <= 20).all() and cols.sum() > 0
    assert torch.equal(y[~masked], x[~masked])


def test_specaugment_seeded_3d_p_and_mean_fill():
    x = _feats(b=200)[:, 0]  # (B, F, T)
    a = SpecAugment(seed=3).train()(x)
    b = SpecAugment(seed=3).train()(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, SpecAugment(seed=4).train()(x))
    half = SpecAugment(p=0.5, freq_width=20, seed=5).train()(x)
    touched = (half != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.35 < touched < 0.65
    m = SpecAugment(mask_value="mean", freq_masks=1, freq_width=40, time_masks=0, seed=6).train()
    y = m(x)
    means = x.mean(dim=(1, 2))
    for i in range(10):
        changed = y[i] != x[i]
        if changed.any():
            assert torch.allclose(y[i][changed], means[i].expand(int(changed.sum())))


def test_specaugment_from_config():
    sa = SpecAugment.from_config(AugmentConfig(spec_prob=0.7, spec_freq_width=5))
    assert sa.p == 0.7 and sa.freq_width == 5 and sa.time_masks == 2
    assert SpecAugment.from_config(AugmentConfig(enabled=False, spec_prob=0.7)).p == 0.0
    with pytest.raises(KwsError, match=r"^specaugment\.p: must be in \[0, 1\], got 2\.0"):
        SpecAugment(p=2.0)
    sd = SpecAugment.from_dict({"freq_masks": 1, "time_width": 4, "p": 0.5}, seed=0)
    assert (sd.freq_masks, sd.time_width, sd.p, sd.time_masks) == (1, 4, 0.5, 2)
    with pytest.raises(KwsError, match=r"^specaugment\.freq_mask: unknown key"):
        SpecAugment.from_dict({"freq_mask": 1})
    with pytest.raises(KwsError, match=r"^specaugment\.time_width: must be an integer >= 0"):
        SpecAugment.from_dict({"time_width": -1})
