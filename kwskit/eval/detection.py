"""Scoring a streaming detector: the one detection rule, DET sweeps, FA per hour.

The rule (the streaming wake-word rule of MLPerf Tiny; Banbury et al. 2021, arXiv:2106.07597,
and its streaming wake-word benchmark), for every keyword occurrence [onset, end]
(``kwskit.data.streams.Occurrence``):

- it is found when a detection of that keyword starts (its score crosses the threshold)
  between its onset and end + ``tolerance_s`` (1 s); otherwise it is a false reject. A
  detection finds at most one occurrence.
- every other detection -- a keyword that was not spoken there, a second detection of one
  word, one outside every occurrence window of its keyword -- is a false alarm. Detections are
  debounced by the detector (``refractory_s``, 1 s), so one flickering score counts once.

Detection times are the model's frame times (see kwskit.stream.streaming); the constant
processing delay (front-end framing + look-ahead) comes on top in a live system.

``sweep`` runs the detector (kwskit.stream.detector) over stored scores at many thresholds
and scores each: a DET curve, false-reject rate vs false alarms per hour, per keyword and
overall; ``summarize`` / ``frr_at_fa`` read operating points off it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from kwskit.data.speech_commands import keyword_labels
from kwskit.data.streams import Occurrence
from kwskit.errors import KwsError
from kwskit.stream.detector import Detection, Detector

TOLERANCE_S = 1.0  # a keyword may be detected up to 1 s after it ends


def _match(detections: Sequence[Detection], occurrences: Sequence[Occurrence],
           tolerance_s: float) -> tuple[dict, dict, dict]:
    """The rule's matching: ({keyword: its detections by start}, {keyword: matched flags},
    {keyword: [occurrences, hits]})."""
    by_kw: dict[str, list[Detection]] = {}
    for d in sorted(detections, key=lambda d: d.start):
        by_kw.setdefault(d.keyword, []).append(d)
    starts = {kw: np.array([d.start for d in ds]) for kw, ds in by_kw.items()}
    used = {kw: np.zeros(len(v), bool) for kw, v in starts.items()}
    counts: dict[str, list[int]] = {}
    for o in sorted(occurrences, key=lambda o: (o.start, o.keyword)):
        row = counts.setdefault(o.keyword, [0, 0])
        row[0] += 1
        st = starts.get(o.keyword)
        if st is None:
            continue
        lo = int(np.searchsorted(st, o.start - 1e-9, side="left"))
        hi = int(np.searchsorted(st, o.end + tolerance_s + 1e-9, side="right"))
        free = np.flatnonzero(~used[o.keyword][lo:hi])
        if len(free):
            used[o.keyword][lo + free[0]] = True
            row[1] += 1
    return by_kw, used, counts


def score_detections(detections: Sequence[Detection], occurrences: Sequence[Occurrence],
                     keywords: Sequence[str], duration_s: float,
                     tolerance_s: float = TOLERANCE_S) -> dict:
    """Apply the scoring rule (module doc) to one set of detections.

    A detection's time is its ``start`` (the frame where the smoothed score crossed the
    threshold). Each occurrence is matched to the earliest unmatched detection of its keyword
    with onset <= start <= end + ``tolerance_s``; a detection matches at most one occurrence,
    so one long span over several words counts once.

    Returns {keyword: {occurrences, hits, misses, false_alarms, frr, fa_per_hour}} for every
    keyword plus "overall" (sums; frr is None without occurrences).
    """
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise KwsError(f"duration_s: must be a positive number of seconds, got {duration_s}")
    hours = duration_s / 3600.0
    _, used, counts = _match(detections, occurrences, tolerance_s)
    per = {k: {"occurrences": 0, "hits": 0, "false_alarms": 0} for k in keywords}
    for kw, (n, hits) in counts.items():
        per.setdefault(kw, {"occurrences": 0, "hits": 0, "false_alarms": 0}).update(
            occurrences=n, hits=hits)
    for kw, u in used.items():
        per.setdefault(kw, {"occurrences": 0, "hits": 0, "false_alarms": 0})
        per[kw]["false_alarms"] += int((~u).sum())
    total = {"occurrences": 0, "hits": 0, "false_alarms": 0}
    for row in per.values():
        for key in total:
            total[key] += row[key]
    per["overall"] = total
    for row in per.values():
        row["misses"] = row["occurrences"] - row["hits"]
        row["frr"] = row["misses"] / row["occurrences"] if row["occurrences"] else None
        row["fa_per_hour"] = row["false_alarms"] / hours
    return per


def false_alarms(detections: Sequence[Detection], occurrences: Sequence[Occurrence],
                 tolerance_s: float = TOLERANCE_S) -> list[Detection]:
    """The detections the scoring rule counts as false alarms, by start time."""
    by_kw, used, _ = _match(detections, occurrences, tolerance_s)
    return sorted((d for kw, ds in by_kw.items() for d, u in zip(ds, used[kw]) if not u),
                  key=lambda d: d.start)


def false_alarm_sources(alarms: Sequence[Detection], words: Sequence[dict],
                        window_s: float = 1.0) -> dict:
    """What each false alarm heard: the words (dicts with ``word``, ``start``, ``end``,
    ``keyword``) overlapping the ``window_s`` before its start. Counts of alarms over the same
    keyword ("repeat": one word detected twice, the second time outside the scoring rule's
    window), over another keyword ("keyword": e.g. "down" taken for "no"), over non-keyword
    words only ("word") and over no word ("noise": pauses, loud noise)."""
    out = {"repeat": 0, "keyword": 0, "word": 0, "noise": 0}
    starts = np.array([w["start"] for w in words], np.float64)
    ends = np.array([w["end"] for w in words], np.float64)
    for a in alarms:
        near = [w for w, s, e in zip(words, starts, ends) if s <= a.start and e >= a.start - window_s]
        if any(w["keyword"] and w["word"] == a.keyword for w in near):
            out["repeat"] += 1
        elif near:
            out["keyword" if any(w["keyword"] for w in near) else "word"] += 1
        else:
            out["noise"] += 1
    return out


def default_thresholds() -> np.ndarray:
    """0.02 .. 0.98 in steps of 0.02, 0.8 .. 0.99 in steps of 0.005, then towards 1 (0.995,
    0.998, ... 0.99999). Operating points at a few false alarms an hour sit high up, where the
    keyword scores of a confident model crowd together: steps of 0.02 there skip from one
    false alarm to several."""
    fine = 1.0 - np.array([1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5])
    return np.unique(np.round(np.concatenate([np.arange(0.02, 0.981, 0.02),
                                              np.arange(0.8, 0.9901, 0.005), fine]), 6))


def sweep(scores: np.ndarray, times: np.ndarray, labels: Sequence[str],
          occurrences: Sequence[Occurrence], duration_s: float,
          thresholds: Sequence[float] | None = None, smoothing_s: float = 0.1,
          refractory_s: float = 1.0, min_duration_s: float = 0.0,
          tolerance_s: float = TOLERANCE_S) -> dict:
    """DET curves from stored scores: the detector at every threshold, scored.

    Returns {thresholds, curves {keyword|"overall": {frr: [...], fa_per_hour: [...],
    false_alarms: [...], misses: [...]}}, occurrences {keyword: n}, duration_s}. Smoothing
    is computed once (it does not depend on the threshold).
    """
    thr = default_thresholds() if thresholds is None else np.asarray(thresholds, np.float64)
    keywords = keyword_labels(labels)
    smoothed = Detector(labels, smoothing_s=smoothing_s).smooth(
        np.asarray(scores, np.float64), np.asarray(times, np.float64))
    curves = {k: {"frr": [], "fa_per_hour": [], "false_alarms": [], "misses": []}
              for k in keywords + ["overall"]}
    for t in thr:
        det = Detector(labels, threshold=float(t), smoothing_s=0.0, refractory_s=refractory_s,
                       min_duration_s=min_duration_s).detect(smoothed, times)
        res = score_detections(det, occurrences, keywords, duration_s, tolerance_s)
        for k, c in curves.items():
            r = res[k]
            c["frr"].append(r["frr"])
            c["fa_per_hour"].append(r["fa_per_hour"])
            c["false_alarms"].append(r["false_alarms"])
            c["misses"].append(r["misses"])
    counts = {k: sum(1 for o in occurrences if o.keyword == k) for k in keywords}
    counts["overall"] = len(occurrences)
    return {"thresholds": [float(t) for t in thr], "curves": curves, "occurrences": counts,
            "duration_s": float(duration_s)}


def _occurrence_windows(scores, times, labels, occurrences, smoothing_s, tolerance_s):
    """(n, own class index, smoothed scores inside the window) for each occurrence with frames
    in its detection window [onset, end + ``tolerance_s``]."""
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({o.keyword for o in occurrences} - set(index))
    if unknown:
        raise KwsError(f"occurrences: keyword(s) {', '.join(unknown)} not among the model's "
                       f"labels ({', '.join(labels)})")
    times = np.asarray(times, np.float64)
    smoothed = Detector(labels, smoothing_s=smoothing_s).smooth(np.asarray(scores, np.float64),
                                                                times)
    for n, o in enumerate(occurrences):
        a = np.searchsorted(times, o.start, side="left")
        b = np.searchsorted(times, o.end + tolerance_s, side="right")
        if b > a:
            yield n, index[o.keyword], smoothed[a:b]


def keyword_peaks(scores: np.ndarray, times: np.ndarray, labels: Sequence[str],
                  occurrences: Sequence[Occurrence], smoothing_s: float = 0.1,
                  tolerance_s: float = TOLERANCE_S) -> np.ndarray:
    """The highest smoothed score each occurrence's own keyword reaches inside its detection
    window [onset, end + ``tolerance_s``] (the window the scoring rule accepts), in the order
    of ``occurrences``; 0 where no frame falls in the window.

    The DET curve says how many keywords a threshold misses; these peaks say why: an
    occurrence is missed at every threshold above its peak, whatever the false alarms.
    """
    peaks = np.zeros(len(occurrences))
    for n, own, window in _occurrence_windows(scores, times, labels, occurrences, smoothing_s,
                                              tolerance_s):
        peaks[n] = window[:, own].max()
    return peaks


def keyword_rivals(scores: np.ndarray, times: np.ndarray, labels: Sequence[str],
                   occurrences: Sequence[Occurrence], smoothing_s: float = 0.1,
                   tolerance_s: float = TOLERANCE_S) -> list[str | None]:
    """For each occurrence, the class with the highest smoothed score other than its own at the
    frame where its own score peaks inside its detection window (None where no frame falls in
    it): what a missed keyword was taken for at its best moment (``_silence_`` when the word
    drowned in the noise, ``_unknown_`` when it sounded like another word)."""
    rivals: list[str | None] = [None] * len(occurrences)
    for n, own, window in _occurrence_windows(scores, times, labels, occurrences, smoothing_s,
                                              tolerance_s):
        frame = window[int(np.argmax(window[:, own]))].copy()
        frame[own] = -np.inf
        rivals[n] = labels[int(np.argmax(frame))]
    return rivals


SMOOTHING_GRID = (0.05, 0.1, 0.2, 0.3)  # seconds tried by fit_thresholds


def fit_thresholds(scores: np.ndarray, times: np.ndarray, labels: Sequence[str],
                   occurrences: Sequence[Occurrence], duration_s: float,
                   target_fa_per_hour: float = 1.0,
                   smoothing_grid: Sequence[float] = SMOOTHING_GRID,
                   refractory_s: float = 1.0, tolerance_s: float = TOLERANCE_S) -> dict:
    """Per-keyword thresholds (and a smoothing window) for a false-alarm budget.

    Each of the K keywords may raise ``target_fa_per_hour / K`` false alarms per hour on this
    stream; the detector runs each keyword on its own, so their false alarms add up to at
    most the target. For every smoothing in ``smoothing_grid`` each keyword takes, among the
    thresholds of ``default_thresholds`` within its share, the one that misses fewest of its
    occurrences (the lowest on ties); the smoothing that misses fewest overall wins. A keyword
    that no threshold keeps within its share gets the highest threshold and is listed in
    ``over_budget``.

    Returns {target_fa_per_hour, smoothing_s, refractory_s, thresholds {keyword: t},
    over_budget [...], result (score_detections at those settings)}.
    """
    if not (isinstance(target_fa_per_hour, (int, float)) and target_fa_per_hour > 0):
        raise KwsError(f"--target-fa-per-hour: must be > 0, got {target_fa_per_hour!r}")
    keywords = keyword_labels(labels)
    if not keywords:
        raise KwsError("calibration needs keyword labels")
    share = target_fa_per_hour / len(keywords)
    best = None
    for smoothing in smoothing_grid:
        res = sweep(scores, times, labels, occurrences, duration_s, smoothing_s=smoothing,
                    refractory_s=refractory_s, tolerance_s=tolerance_s)
        thr, over, misses = {}, [], 0
        for k in keywords:
            c = res["curves"][k]
            ok = [i for i, fa in enumerate(c["fa_per_hour"]) if fa <= share + 1e-12]
            if not ok:
                i = len(res["thresholds"]) - 1
                over.append(k)
            else:
                i = min(ok, key=lambda j: (c["misses"][j], res["thresholds"][j]))
            thr[k] = res["thresholds"][i]
            misses += c["misses"][i]
        if best is None or misses < best[0]:
            best = (misses, smoothing, thr, over)
    _, smoothing, thr, over = best
    det = Detector(labels, threshold=thr, smoothing_s=smoothing,
                   refractory_s=refractory_s).detect(scores, times)
    return {"target_fa_per_hour": float(target_fa_per_hour), "smoothing_s": float(smoothing),
            "refractory_s": float(refractory_s), "thresholds": thr, "over_budget": over,
            "result": score_detections(det, occurrences, keywords, duration_s, tolerance_s)}


def frr_at_fa(curve: dict, thresholds: Sequence[float], fa_per_hour: float = 1.0) -> dict:
    """Lowest FRR among thresholds whose false alarms per hour are <= ``fa_per_hour``.

    Returns {frr, fa_per_hour, threshold} (all None when no threshold is quiet enough or the
    keyword never occurs).
    """
    best = {"frr": None, "fa_per_hour": None, "threshold": None}
    for t, frr, fa in zip(thresholds, curve["frr"], curve["fa_per_hour"]):
        if frr is None or fa > fa_per_hour + 1e-12:
            continue
        if best["frr"] is None or frr < best["frr"] or (frr == best["frr"] and t < best["threshold"]):
            best = {"frr": float(frr), "fa_per_hour": float(fa), "threshold": float(t)}
    return best


def summarize(result: dict, fa_targets: Sequence[float] = (1.0,)) -> dict:
    """FRR at the given FA/h targets (and at threshold 0.5) for every curve."""
    thr = result["thresholds"]
    out = {}
    for k, c in result["curves"].items():
        row = {f"at_{g:g}_fa_per_hour": frr_at_fa(c, thr, g) for g in fa_targets}
        i = int(np.argmin(np.abs(np.asarray(thr) - 0.5)))
        row["at_threshold_0.5"] = {"threshold": thr[i], "frr": c["frr"][i],
                                   "fa_per_hour": c["fa_per_hour"][i]}
        out[k] = row
    return out


def det_envelope(fa_per_hour: Sequence[float], frr: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """The DET curve of a threshold sweep: for every false-alarm rate reached, the lowest
    FRR of any threshold with at most that rate (x ascending, y non-increasing)."""
    pts = [(a, f) for a, f in zip(fa_per_hour, frr) if f is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    fa = np.array([p[0] for p in pts], np.float64)
    fr = np.array([p[1] for p in pts], np.float64)
    xs = np.unique(fa)
    best = np.array([fr[fa == x].min() for x in xs])
    return xs, np.minimum.accumulate(best)


def format_summary(result: dict) -> str:
    """Human-readable lines: FRR at 1 FA/h and at threshold 0.5, overall and per keyword."""
    hours = result["duration_s"] / 3600.0
    lines = [f"stream: {result['duration_s'] / 60:.1f} min, {result['occurrences']['overall']} "
             f"keyword occurrences; one false alarm = {1 / hours:.1f} FA/h"]
    width = max(len(k) for k in result["summary"])
    lines.append(f"{'keyword':<{width}}  {'n':>4}  {'FRR@1FA/h':>9}  {'thr':>7}  "
                 f"{'FRR@0.5':>7}  {'FA/h@0.5':>8}")
    for k, row in result["summary"].items():
        a, b = row["at_1_fa_per_hour"], row["at_threshold_0.5"]
        frr1 = f"{a['frr']:.1%}" if a["frr"] is not None else "n/a"
        thr1 = f"{a['threshold']:.5g}" if a["threshold"] is not None else "-"
        frr5 = f"{b['frr']:.1%}" if b["frr"] is not None else "n/a"
        lines.append(f"{k:<{width}}  {result['occurrences'].get(k, 0):>4}  {frr1:>9}  {thr1:>7}  "
                     f"{frr5:>7}  {b['fa_per_hour']:>8.1f}")
    return "\n".join(lines)


__all__ = ["TOLERANCE_S", "default_thresholds", "det_envelope", "format_summary", "frr_at_fa",
           "score_detections", "summarize", "sweep"]
