"""benchmarks/clip_confidence.py: noise at an SNR over the word, and the confidence counts."""

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "clip_confidence", Path(__file__).resolve().parent.parent / "benchmarks" / "clip_confidence.py")
cc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cc)


def test_noise_is_mixed_at_the_snr_of_the_word():
    sr = 16000
    t = np.arange(sr) / sr
    clip = np.zeros((1, sr), np.float32)
    clip[0, 4000:8000] = 0.2 * np.sin(2 * np.pi * 500 * t[4000:8000])  # a quarter-second word
    noise = [np.random.default_rng(1).standard_normal(5 * sr).astype(np.float32)]
    for snr in (10.0, 20.0):
        mixed = cc.mix_at_snr(clip, noise, snr)
        added = mixed[0] - clip[0]
        word = np.sqrt(np.mean(clip[0, 4000:8000] ** 2))
        assert abs(20 * np.log10(word / np.sqrt(np.mean(added ** 2))) - snr) < 0.3
    assert np.array_equal(clip[0, :4000], np.zeros(4000))  # the input is left alone


def test_confidence_counts_own_scores_and_keyword_takeovers():
    is_kw = np.array([True, True, False])
    probs = np.array([[0.96, 0.02, 0.02],   # right, confident
                      [0.60, 0.30, 0.10],   # right, not confident
                      [0.05, 0.90, 0.05],   # taken by the other keyword at 0.9
                      [0.10, 0.10, 0.80]])  # taken by a non-keyword: no false alarm
    targets = np.array([0, 0, 0, 1])
    c = cc.confidence(probs, targets, is_kw, [0.5, 0.95])
    assert c["acc"] == 0.5
    assert c["own"] == {0.5: 0.5, 0.95: 0.25}
    assert c["taken"] == {0.5: 1, 0.95: 0}
