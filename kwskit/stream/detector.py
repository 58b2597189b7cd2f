"""Keyword detections from per-frame class scores: smoothing, threshold spans, debounce.

For every keyword (a label not in ``ignore``):

1. smoothing: the score at frame i is the mean of the raw posteriors of the frames whose time
   lies in ``(t_i - smoothing_s, t_i]`` (a causal moving average; 0 = no smoothing);
2. spans: a detection starts at the first frame whose smoothed score is >= the keyword's
   threshold and ends at the last frame before it falls below; ``start``/``end`` are those
   frames' times and ``score`` the span's peak smoothed score;
3. ``min_duration_s``: spans with ``end - start`` below it are dropped;
4. debounce (``refractory_s``): a span starting less than ``refractory_s`` after the start of
   the keyword's previous detection is dropped (one spoken word, one detection).

A detection is emitted when its span ends -- its score falls below the threshold -- or when
the stream ends (``finish``). ``update`` works incrementally and gives the same detections
as one ``detect`` call over the concatenated scores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from kwskit.data.speech_commands import SILENCE, UNKNOWN
from kwskit.errors import KwsError

DEFAULT_IGNORE = (SILENCE, UNKNOWN)
_EPS = 1e-9  # seconds: frame times are sums of float steps; window edges must not flicker


@dataclass(frozen=True)
class Detection:
    """One detected keyword: span [start, end] in seconds, peak smoothed score in [0, 1]."""

    keyword: str
    start: float
    end: float
    score: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(start=round(self.start, 4), end=round(self.end, 4), score=round(self.score, 4))
        return d


def _check_seconds(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise KwsError(f"{name}: must be a number of seconds >= 0, got {v!r}")
    return float(v)


def _check_threshold(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise KwsError(f"{name}: must be a probability in [0, 1], got {v!r}")
    return float(v)


class Detector:
    """Stateful keyword detector over a stream of (frames, classes) probabilities.

    Args:
        labels: class names in score-column order.
        threshold: one probability for every keyword, or ``{keyword: probability}`` (keywords
            not named use 0.5).
        smoothing_s: moving-average window over posteriors [s].
        refractory_s: debounce: minimum time between detection starts of one keyword [s].
        min_duration_s: minimum span length (end - start) [s].
        ignore: labels never reported (silence, unknown).
    """

    def __init__(self, labels: Sequence[str], threshold: float | dict = 0.5,
                 smoothing_s: float = 0.1, refractory_s: float = 1.0,
                 min_duration_s: float = 0.0, ignore: Sequence[str] = DEFAULT_IGNORE):
        self.labels = [str(x) for x in labels]
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise KwsError("labels: need a non-empty list of distinct class names")
        self.ignore = tuple(ignore)
        self.keywords = [i for i, lab in enumerate(self.labels) if lab not in self.ignore]
        if isinstance(threshold, dict):
            unknown = sorted(set(map(str, threshold)) - set(self.labels))
            if unknown:
                raise KwsError(f"threshold: unknown keyword(s) {', '.join(unknown)} "
                               f"(labels: {', '.join(self.labels)})")
            thr = {str(k): _check_threshold(f"threshold[{k}]", v) for k, v in threshold.items()}
            self.thresholds = np.array([thr.get(lab, 0.5) for lab in self.labels])
        else:
            self.thresholds = np.full(len(self.labels), _check_threshold("threshold", threshold))
        self.smoothing_s = _check_seconds("smoothing_s", smoothing_s)
        self.refractory_s = _check_seconds("refractory_s", refractory_s)
        self.min_duration_s = _check_seconds("min_duration_s", min_duration_s)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next update starts a new stream."""
        c = len(self.labels)
        self._hist_t = np.zeros(0, np.float64)  # frames still inside the smoothing window
        self._hist_s = np.zeros((0, c), np.float64)
        self._open: dict[int, list] = {}  # keyword -> [start, end, peak] of the span in progress
        self._last_start = np.full(c, -np.inf)  # start of each keyword's last detection
        self._last_time = -np.inf

    # ------------------------------------------------------------------ smoothing
    def _check(self, scores, times) -> tuple[np.ndarray, np.ndarray]:
        s = np.asarray(scores, np.float64)
        t = np.asarray(times, np.float64).reshape(-1)
        if s.ndim != 2 or s.shape[1] != len(self.labels):
            raise KwsError(f"scores: expected (frames, {len(self.labels)}) probabilities, got "
                           f"shape {s.shape}")
        if t.shape[0] != s.shape[0]:
            raise KwsError(f"times: {t.shape[0]} times for {s.shape[0]} score frames")
        if len(t) and (np.any(np.diff(t) <= 0) or t[0] <= self._last_time):
            raise KwsError("times: must increase strictly (across update calls too)")
        return s, t

    def smooth(self, scores: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Smoothed scores of new frames, using (and advancing) the kept history."""
        if self.smoothing_s <= 0 or not len(times):
            return scores
        t = np.concatenate([self._hist_t, times])
        s = np.concatenate([self._hist_s, scores])
        csum = np.vstack([np.zeros((1, s.shape[1])), np.cumsum(s, axis=0)])
        h = len(self._hist_t)
        end = np.arange(h, len(t)) + 1
        begin = np.searchsorted(t, t[h:] - self.smoothing_s + _EPS, side="left")
        out = (csum[end] - csum[begin]) / (end - begin)[:, None]
        keep = t > t[-1] - self.smoothing_s + _EPS
        self._hist_t, self._hist_s = t[keep], s[keep]
        return out

    # ------------------------------------------------------------------ spans
    def _close(self, k: int, out: list) -> None:
        start, end, peak = self._open.pop(k)
        if end - start + _EPS < self.min_duration_s:
            return
        if start - self._last_start[k] + _EPS < self.refractory_s:
            return
        self._last_start[k] = start
        out.append(Detection(self.labels[k], float(start), float(end), float(peak)))

    def update(self, scores, times) -> list[Detection]:
        """Feed new frames (frames, classes) with their times (s); returns the detections
        whose spans ended in them, ordered by end time."""
        s, t = self._check(scores, times)
        if not len(t):
            return []
        sm = self.smooth(s, t)
        self._last_time = float(t[-1])
        out: list[Detection] = []
        for k in self.keywords:
            above = sm[:, k] >= self.thresholds[k]
            was_open = k in self._open
            # run boundaries: +1 where a run of 'above' starts, -1 after it ends
            edges = np.diff(np.concatenate([[was_open], above, [False]]).astype(np.int8))
            starts = np.flatnonzero(edges == 1)
            ends = np.flatnonzero(edges == -1)  # index just past each run
            if was_open:
                starts = np.concatenate([[-1], starts])  # the run carried over from before
            for a, b in zip(starts, ends):
                if b == 0:  # the open span ended right at the chunk boundary
                    self._close(k, out)
                    continue
                seg = sm[max(a, 0):b, k]
                if a < 0:
                    span = self._open[k]
                    span[1], span[2] = t[b - 1], max(span[2], float(seg.max()))
                else:
                    self._open[k] = [t[a], t[b - 1], float(seg.max())]
                if b < len(t):
                    self._close(k, out)
        out.sort(key=lambda d: (d.end, d.start))
        return out

    def finish(self) -> list[Detection]:
        """End of stream: emit the spans still above threshold (then ``reset``)."""
        out: list[Detection] = []
        for k in sorted(self._open):
            self._close(k, out)
        out.sort(key=lambda d: (d.end, d.start))
        self.reset()
        return out

    def detect(self, scores, times) -> list[Detection]:
        """One shot: detections over a whole score track (a fresh stream, finished)."""
        self.reset()
        return self.update(scores, times) + self.finish()


def detect(scores, times, labels: Sequence[str], **kw) -> list[Detection]:
    """``Detector(labels, **kw).detect(scores, times)``."""
    return Detector(labels, **kw).detect(scores, times)
