"""Detector: threshold spans, smoothing, debounce, minimum duration, incremental == one shot,
all on hand-made score tracks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from kwskit.errors import KwsError
from kwskit.stream.detector import Detection, Detector, detect

LABELS = ["yes", "no", "_silence_", "_unknown_"]
STEP = 0.01  # seconds per frame


def track(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """n frames of pure silence, 10 ms apart."""
    s = np.zeros((n, len(LABELS)))
    s[:, 2] = 1.0
    return s, np.arange(n) * STEP


def put(s: np.ndarray, word: str, a: int, b: int, p: float) -> None:
    """Give ``word`` probability ``p`` on frames [a, b), the rest to silence."""
    k = LABELS.index(word)
    s[a:b, :] = 0.0
    s[a:b, k] = p
    s[a:b, 2] = 1.0 - p


def test_one_bump_gives_one_detection_with_its_span_and_peak():
    s, t = track()
    put(s, "yes", 100, 130, 0.8)
    s[110, 0], s[110, 2] = 0.97, 0.03
    (d,) = detect(s, t, LABELS, smoothing_s=0.0)
    assert d == Detection("yes", pytest.approx(1.00), pytest.approx(1.29), pytest.approx(0.97))


def test_threshold_is_inclusive_and_per_keyword():
    s, t = track()
    put(s, "yes", 50, 60, 0.6)
    put(s, "no", 200, 210, 0.6)
    assert [d.keyword for d in detect(s, t, LABELS, threshold=0.6, smoothing_s=0)] == ["yes", "no"]
    assert detect(s, t, LABELS, threshold=0.61, smoothing_s=0) == []
    got = detect(s, t, LABELS, threshold={"yes": 0.7}, smoothing_s=0)  # no: default 0.5
    assert [d.keyword for d in got] == ["no"]
    with pytest.raises(KwsError, match="maybe"):
        Detector(LABELS, threshold={"maybe": 0.5})
    with pytest.raises(KwsError, match="threshold"):
        Detector(LABELS, threshold=1.5)


def test_ignored_labels_never_fire():
    s, t = track()  # silence at probability 1 all along
    assert detect(s, t, LABELS, threshold=0.1) == []
    got = detect(s, t, LABELS, threshold=0.1, ignore=())
    assert [d.keyword for d in got] == ["_silence_"]
    assert got[0].start == 0.0 and got[0].end == pytest.approx(t[-1])


def test_refractory_debounces_per_keyword():
    s, t = track()
    put(s, "yes", 100, 110, 0.9)  # starts at 1.00 s
    put(s, "yes", 150, 160, 0.9)  # 0.5 s later: the same word flickering
    put(s, "no", 155, 165, 0.9)  # another keyword is not debounced by 'yes'
    put(s, "yes", 260, 270, 0.9)  # 1.6 s after the first start: a new word
    got = detect(s, t, LABELS, smoothing_s=0, refractory_s=1.0)
    assert [(d.keyword, round(d.start, 2)) for d in got] == [("yes", 1.0), ("no", 1.55), ("yes", 2.6)]
    got = detect(s, t, LABELS, smoothing_s=0, refractory_s=0.0)
    assert [d.keyword for d in got].count("yes") == 3


def test_min_duration_drops_short_spans():
    s, t = track()
    put(s, "yes", 100, 103, 0.9)  # 3 frames: end - start = 0.02 s
    put(s, "no", 200, 230, 0.9)  # 0.29 s
    got = detect(s, t, LABELS, smoothing_s=0, min_duration_s=0.1)
    assert [d.keyword for d in got] == ["no"]
    # a dropped span does not start a refractory period
    put(s, "yes", 150, 170, 0.9)
    got = detect(s, t, LABELS, smoothing_s=0, min_duration_s=0.1)
    assert [(d.keyword, round(d.start, 2)) for d in got] == [("yes", 1.5), ("no", 2.0)]


def test_smoothing_is_a_causal_moving_average():
    s, t = track()
    s[100, 0], s[100, 2] = 1.0, 0.0  # a one-frame spike: mean 0.1 over 10 frames
    assert detect(s, t, LABELS, smoothing_s=0.1) == []
    assert len(detect(s, t, LABELS, smoothing_s=0.0)) == 1
    put(s, "no", 200, 240, 1.0)  # plateau: the 10-frame mean reaches 0.5 at frame 204
    (d,) = detect(s, t, LABELS, smoothing_s=0.1, threshold=0.5)
    assert d.start == pytest.approx(2.04) and d.end == pytest.approx(2.44)  # falls at 245
    assert d.score == pytest.approx(1.0)
    # the smoothed track itself, against a brute-force mean over (t - 0.1, t]
    rng = np.random.default_rng(0)
    raw = rng.random((60, len(LABELS)))
    times = np.cumsum(rng.uniform(0.005, 0.03, 60))  # irregular frame times
    sm = Detector(LABELS, smoothing_s=0.1).smooth(raw, times)
    for i in range(60):
        win = (times > times[i] - 0.1 + 1e-9) & (times <= times[i])
        np.testing.assert_allclose(sm[i], raw[win].mean(axis=0))


def test_open_span_is_emitted_at_the_end():
    s, t = track(100)
    put(s, "yes", 90, 100, 0.9)
    det = Detector(LABELS, smoothing_s=0)
    assert det.update(s, t) == []  # still above threshold: not emitted yet
    (d,) = det.finish()
    assert d.keyword == "yes" and d.end == pytest.approx(0.99)


@pytest.mark.parametrize("seed", range(4))
def test_incremental_equals_one_shot(seed):
    rng = np.random.default_rng(seed)
    n = 1500
    s, t = track(n)
    for _ in range(25):
        a = int(rng.integers(0, n - 40))
        put(s, LABELS[int(rng.integers(2))], a, a + int(rng.integers(1, 40)), rng.uniform(0.3, 1.0))
    kw = dict(threshold={"yes": 0.55, "no": 0.45}, smoothing_s=0.05, refractory_s=0.3,
              min_duration_s=0.02)
    once = Detector(LABELS, **kw).detect(s, t)
    det, got, i = Detector(LABELS, **kw), [], 0
    while i < n:
        c = int(rng.choice([0, 1, 2, 7, 33, 200]))
        got += det.update(s[i : i + c], t[i : i + c])
        i += c
    got += det.finish()
    assert len(once) > 5
    assert [(d.keyword, round(d.start, 6), round(d.end, 6)) for d in got] == \
           [(d.keyword, round(d.start, 6), round(d.end, 6)) for d in once]
    np.testing.assert_allclose([d.score for d in got], [d.score for d in once], atol=1e-12)


def test_bad_inputs_name_the_field():
    det = Detector(LABELS)
    s, t = track(10)
    with pytest.raises(KwsError, match="scores"):
        det.update(s[:, :3], t)
    with pytest.raises(KwsError, match="times"):
        det.update(s, t[:5])
    det.update(s, t)
    with pytest.raises(KwsError, match="increase"):
        det.update(s, t)  # the same times again
    with pytest.raises(KwsError, match="smoothing_s"):
        Detector(LABELS, smoothing_s=-1)
    with pytest.raises(KwsError, match="labels"):
        Detector(["yes", "yes"])
