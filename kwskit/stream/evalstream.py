"""Streaming evaluation: long test streams, the wake-word scoring rule, DET curves.

Test stream (``build_test_stream``, seeded): a continuous bed of background noise (random
excerpts of the data set's ``_background_noise_`` recordings, each excerpt scaled to one
level; white noise when there are none) into which spoken words are mixed one after another,
with 0.5-2.5 s of noise-only "silence" between them. Half the words are keywords (the model's
labels), half other words of the data set (``_unknown_`` material); all come from one split
(test clips for a model trained on the train split). Each clip is cut to its active part
(frame energy, ``speech_bounds``) plus 100 ms margins and mixed at an SNR drawn uniformly
from the stated range, measured over the word's active part. The word's onset and end are
recorded: they are the ground truth.

Scoring (the streaming wake-word rule of MLPerf Tiny; Banbury et al. 2021, arXiv:2106.07597,
and its streaming wake-word benchmark), for every keyword occurrence [onset, end]:

- it is found when a detection of that keyword starts (its score crosses the threshold)
  between its onset and end + 1 s; otherwise it is a false reject. A detection finds at most
  one occurrence.
- every other detection -- a keyword that was not spoken there, a second detection of one
  word, one outside every occurrence window of its keyword -- is a false alarm. Detections are
  debounced by the detector (``refractory_s``, 1 s), so one flickering score counts once.

Detection times are the model's frame times (see kwskit.stream.streaming); the constant
processing delay ``delay_s`` (front-end framing + look-ahead) comes on top in a live system
and is reported beside the curves.

The model runs once over the stream (Streamer); the detector then sweeps thresholds over the
stored scores, giving a DET curve: false-reject rate vs false alarms per hour, per keyword
and overall.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kwskit import SAMPLE_RATE
from kwskit.data.speech_commands import keyword_labels
from kwskit.errors import KwsError
from kwskit.stream.detector import Detection, Detector

TOLERANCE_S = 1.0  # a keyword may be detected up to 1 s after it ends
GAP_S = (0.5, 2.5)  # noise-only pause between words [s]
MARGIN_S = 0.1  # kept around a clip's active part [s]
KEYWORD_SHARE = 0.5  # share of words that are keywords


@dataclass(frozen=True)
class Occurrence:
    """A spoken keyword in a stream: onset and end of its active part [s]."""

    keyword: str
    start: float
    end: float


# ---------------------------------------------------------------------------------- clips
def speech_bounds(x: np.ndarray, sample_rate: int = SAMPLE_RATE, frame_s: float = 0.01,
                  rel_db: float = 0.35) -> tuple[int, int] | None:
    """(first, last+1) sample of the active part of a clip, from 10 ms frame energies.

    A frame is active when its energy (dB) is above ``floor + rel_db * (peak - floor)``
    (floor = 10th percentile of the frame energies, peak = the maximum), and at least 6 dB
    above the floor. None for a clip with no such frame (silence, constant noise).
    """
    n = max(1, int(round(frame_s * sample_rate)))
    frames = len(x) // n
    if frames < 1:
        return None
    e = np.mean(np.square(x[: frames * n].reshape(frames, n), dtype=np.float64), axis=1)
    db = 10.0 * np.log10(e + 1e-12)
    floor, peak = float(np.percentile(db, 10)), float(db.max())
    if peak - floor < 6.0:
        return None
    thr = floor + max(6.0, rel_db * (peak - floor))
    active = np.flatnonzero(db >= thr)
    return int(active[0] * n), int(min(len(x), (active[-1] + 1) * n))


def _fade(x: np.ndarray, n: int) -> np.ndarray:
    n = min(n, len(x) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


# ---------------------------------------------------------------------------------- stream
@dataclass
class TestStream:
    """A generated stream: audio, keyword occurrences and every word placed."""

    audio: np.ndarray  # float32 mono at sample_rate
    sample_rate: int
    occurrences: list[Occurrence]
    words: list[dict]  # every placed word: word, keyword?, start, end, snr_db, path
    noise: str  # what the bed was made of

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


def _noise_bed(paths: Sequence[str], n: int, rng: np.random.Generator,
               sample_rate: int) -> tuple[np.ndarray, str]:
    """``n`` samples of background: random 1-5 s excerpts of the recordings, each scaled to
    unit RMS, joined with 20 ms cross-fades (white noise when there are no recordings)."""
    from kwskit.data.audio import load_audio

    noises = []
    for p in paths:
        x = load_audio(p, sample_rate)
        if _rms(x) > 0 and len(x) >= sample_rate:
            noises.append(x)
    if not noises:
        return rng.standard_normal(n).astype(np.float32), "white noise (no _background_noise_)"
    bed = np.zeros(n, np.float32)
    fade = int(0.02 * sample_rate)
    pos = 0
    while pos < n:
        src = noises[int(rng.integers(len(noises)))]
        length = min(int(rng.uniform(1.0, 5.0) * sample_rate), len(src))
        off = int(rng.integers(0, len(src) - length + 1))
        seg = src[off : off + length].astype(np.float32)
        seg = _fade(seg / max(_rms(seg), 1e-6), fade)
        end = min(n, pos + length)
        bed[pos:end] += seg[: end - pos]
        pos = end - fade if end < n else end  # overlap the fades
    names = ", ".join(sorted(os.path.splitext(os.path.basename(p))[0] for p in paths))
    return bed, f"_background_noise_ ({names})"


def build_test_stream(data: str | os.PathLike, labels: Sequence[str], split: str = "test",
                      minutes: float = 10.0, snr_db: Sequence[float] = (10.0, 20.0),
                      seed: int = 0, sample_rate: int = SAMPLE_RATE,
                      progress: bool = True) -> TestStream:
    """Generate a long stream from one split of a Speech Commands style data set.

    Args:
        data: data set folder (``scan_dataset`` layout).
        labels: the model's labels; keywords are those not in ``_silence_``/``_unknown_``.
        split: "test" / "validation" / "train" (clips of that split only).
        minutes: stream length.
        snr_db: (low, high) dB range the per-word SNR is drawn from (one value = fixed).
        seed: the same seed gives the same stream, sample for sample.
    """
    from tqdm import tqdm

    from kwskit.data.audio import load_audio
    from kwskit.data.speech_commands import normalize_split, scan_dataset

    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise KwsError(f"minutes: must be > 0, got {minutes!r}")
    snr = [float(v) for v in (snr_db if isinstance(snr_db, (list, tuple)) else [snr_db])]
    if not 1 <= len(snr) <= 2 or not all(math.isfinite(v) for v in snr):
        raise KwsError(f"snr: give one value or a low and a high value in dB, got {snr_db!r}")
    lo, hi = min(snr), max(snr)
    index = scan_dataset(data)
    name = normalize_split(split)
    clips = index.split(name)
    keywords = keyword_labels(labels)
    by_kw = {w: sorted(c.path for c in clips if c.word == w) for w in keywords}
    by_kw = {w: v for w, v in by_kw.items() if v}
    others = sorted(c.path for c in clips if c.word not in labels and c.word != "_silence_")
    if not clips:
        raise KwsError(f"{data}: no clips in the {name} split (try --split validation)")
    if not by_kw:
        raise KwsError(f"{data}: no clips of the model's keywords ({', '.join(keywords)}) "
                       f"in the {name} split")
    rng = np.random.default_rng([seed, 5])
    n_total = int(round(minutes * 60 * sample_rate))

    # 1. choose the words and where they go (no audio yet)
    decks: dict[str, list[str]] = {}

    def draw(pool_key: str, pool: list[str]) -> str:
        deck = decks.get(pool_key)
        if not deck:  # every clip once before any repeats
            deck = decks[pool_key] = [pool[i] for i in rng.permutation(len(pool))]
        return deck.pop()

    plan, pos = [], int(rng.uniform(*GAP_S) * sample_rate)
    kw_names = sorted(by_kw)
    bar = tqdm(total=n_total // sample_rate, desc="build stream", unit="s", disable=None,
               leave=False) if progress else None
    while pos < n_total - sample_rate:
        is_kw = not others or rng.random() < KEYWORD_SHARE
        if is_kw:
            word = kw_names[int(rng.integers(len(kw_names)))]
            path = draw(word, by_kw[word])
        else:
            path = draw("_others_", others)
            word = os.path.basename(os.path.dirname(path))
        x = load_audio(path, sample_rate)
        bounds = speech_bounds(x, sample_rate)
        if bounds is None:
            continue  # a clip without a word in it: skip, draw again
        a, b = bounds
        margin = int(MARGIN_S * sample_rate)
        cut = _fade(x[max(0, a - margin) : b + margin].astype(np.float32).copy(), margin // 2)
        on = pos + (a - max(0, a - margin))
        if pos + len(cut) > n_total:
            break
        plan.append({"word": word, "keyword": is_kw, "path": path, "cut": cut, "pos": pos,
                     "on": on, "off": on + (b - a), "speech_rms": _rms(x[a:b]),
                     "snr_db": float(rng.uniform(lo, hi)) if hi > lo else lo})
        if bar is not None:
            bar.update(int((pos + len(cut)) // sample_rate) - bar.n)
        pos += len(cut) + int(rng.uniform(*GAP_S) * sample_rate)
    if bar is not None:
        bar.close()

    # 2. the noise bed, at a level that keeps the words near their recorded loudness
    bed, noise_name = _noise_bed(index.background, n_total, rng, sample_rate)
    speech = np.median([p["speech_rms"] for p in plan]) if plan else 0.05
    bed *= float(speech / 10 ** ((lo + hi) / 40.0))
    audio = bed.copy()

    # 3. mix every word at its SNR against the bed under its active part
    occurrences, words = [], []
    for p in plan:
        noise_rms = max(_rms(bed[p["on"] : p["off"]]), 1e-6)
        gain = noise_rms * 10 ** (p["snr_db"] / 20.0) / max(p["speech_rms"], 1e-6)
        audio[p["pos"] : p["pos"] + len(p["cut"])] += gain * p["cut"]
        start, end = p["on"] / sample_rate, p["off"] / sample_rate
        words.append({"word": p["word"], "keyword": p["keyword"], "start": round(start, 4),
                      "end": round(end, 4), "snr_db": round(p["snr_db"], 2),
                      "path": os.path.relpath(p["path"], index.root)})
        if p["keyword"]:
            occurrences.append(Occurrence(p["word"], start, end))
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak > 0.99:  # keep the stream inside [-1, 1] without changing any SNR
        audio *= 0.99 / peak
    return TestStream(audio.astype(np.float32), sample_rate, occurrences, words, noise_name)


# ---------------------------------------------------------------------------------- labels file
def read_labels_file(path: str | os.PathLike, labels: Sequence[str] | None = None) -> list[Occurrence]:
    """Keyword occurrences from a CSV or TSV file of ``keyword, start, end`` (seconds).

    The delimiter is a tab when the first data line has one, else a comma; a first line whose
    start is not a number is a header. Keywords outside ``labels`` raise KwsError naming the
    file and line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KwsError(f"{p}: cannot read labels file ({exc})") from None
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1)
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise KwsError(f"{p}: labels file is empty (expected lines of keyword, start, end)")
    delim = "\t" if "\t" in lines[0][1] else ","
    out = []
    for k, (i, row) in enumerate(zip([i for i, _ in lines],
                                     csv.reader([ln for _, ln in lines], delimiter=delim))):
        row = [c.strip() for c in row]
        if len(row) < 3:
            raise KwsError(f"{p}:{i}: expected keyword, start, end; got {len(row)} field(s)")
        try:
            start, end = float(row[1]), float(row[2])
        except ValueError:
            if k == 0:
                continue  # header
            raise KwsError(f"{p}:{i}: start/end must be numbers of seconds, got "
                           f"{row[1]!r}, {row[2]!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise KwsError(f"{p}:{i}: need 0 <= start <= end, got {start}, {end}")
        if labels is not None and row[0] not in labels:
            raise KwsError(f"{p}:{i}: keyword {row[0]!r} is not one of the model's labels "
                           f"({', '.join(labels)})")
        out.append(Occurrence(row[0], start, end))
    if not out:
        raise KwsError(f"{p}: no keyword lines found")
    return sorted(out, key=lambda o: (o.start, o.keyword))


def write_labels_file(path: str | os.PathLike, occurrences: Sequence[Occurrence]) -> None:
    """TSV with a header, readable by ``read_labels_file``."""
    from kwskit.fsutil import write_text

    lines = ["keyword\tstart\tend"] + [f"{o.keyword}\t{o.start:.4f}\t{o.end:.4f}"
                                      for o in occurrences]
    write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------- scoring
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
    per = {k: {"occurrences": 0, "hits": 0, "false_alarms": 0} for k in keywords}
    starts: dict[str, np.ndarray] = {}
    for kw in {d.keyword for d in detections}:
        starts[kw] = np.sort([d.start for d in detections if d.keyword == kw])
    used = {kw: np.zeros(len(v), bool) for kw, v in starts.items()}
    for o in sorted(occurrences, key=lambda o: (o.start, o.keyword)):
        row = per.setdefault(o.keyword, {"occurrences": 0, "hits": 0, "false_alarms": 0})
        row["occurrences"] += 1
        st = starts.get(o.keyword)
        if st is None:
            continue
        lo = int(np.searchsorted(st, o.start - 1e-9, side="left"))
        hi = int(np.searchsorted(st, o.end + tolerance_s + 1e-9, side="right"))
        free = np.flatnonzero(~used[o.keyword][lo:hi])
        if len(free):
            used[o.keyword][lo + free[0]] = True
            row["hits"] += 1
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


def default_thresholds() -> np.ndarray:
    """0.02 .. 0.98 in steps of 0.02, then towards 1 (0.99, 0.995, ... 0.99999)."""
    fine = 1.0 - np.array([1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5])
    return np.unique(np.round(np.concatenate([np.arange(0.02, 0.981, 0.02), fine]), 6))


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


def evaluate_stream(run: str | os.PathLike, data: str | os.PathLike | None = None,
                    split: str = "test", minutes: float = 10.0,
                    snr_db: Sequence[float] = (10.0, 20.0), seed: int = 0,
                    out: str | os.PathLike | None = None, stream: str | os.PathLike | None = None,
                    labels_file: str | os.PathLike | None = None, which: str = "best",
                    window_s: float = 1.0, smoothing_s: float = 0.1, refractory_s: float = 1.0,
                    save_audio: bool = False, progress: bool = True) -> tuple[dict, Path]:
    """``kwskit eval-stream``: build (or read) a stream, score it once, sweep, write results.

    Writes to ``out`` (default RUN/eval-stream): det.json (settings, curves, summary),
    det.png, stream_labels.tsv (the occurrences) and, with ``save_audio``, stream.flac.
    Returns (result dict, output folder).
    """
    import torch

    from kwskit.fsutil import write_json
    from kwskit.stream.longaudio import array_blocks, run_stream, stream_file
    from kwskit.stream.streaming import Streamer
    from kwskit.train.run import load_model

    if (stream is None) != (labels_file is None):
        raise KwsError("--stream and --labels-file go together (a recording and its keyword "
                       "times)")
    pipeline, cfg, labels = load_model(run, which)
    if stream is None and data is None:
        data = cfg.data.root  # the data set the run was trained on, as its config records it
        if not data or not Path(data).is_dir():
            raise KwsError(f"--data: give a data set folder to build test streams from (the run "
                           f"was trained on {data or 'an unrecorded data set'}, which is not "
                           "here), or --stream FILE --labels-file FILE")
        if progress:
            print(f"data: {data} (the run's training data)", file=sys.stderr)
    streamer = Streamer(pipeline, window_s=window_s)
    keywords = keyword_labels(labels)
    if not keywords:
        raise KwsError(f"{run}: the model has no keyword labels (only {', '.join(labels)})")
    run_path = Path(run)
    out_dir = Path(out) if out else (run_path if run_path.is_dir() else run_path.parent) / "eval-stream"

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small chunks: one thread is fastest and fair to other jobs
    try:
        if stream is None:
            ts = build_test_stream(data, labels, split, minutes, snr_db, seed, progress=progress)
            occurrences = ts.occurrences
            scored = run_stream(streamer, array_blocks(ts.audio, streamer.sample_rate),
                                keep_scores=True, source="test stream",
                                total_s=ts.duration_s, progress=progress)
            source = {"kind": "generated", "data": str(data), "split": split, "minutes": minutes,
                      "snr_db": list(snr_db) if isinstance(snr_db, (list, tuple)) else [snr_db],
                      "seed": seed, "noise": ts.noise, "words": len(ts.words),
                      "keyword_share": KEYWORD_SHARE, "gap_s": list(GAP_S)}
        else:
            occurrences = read_labels_file(labels_file, labels)
            scored = stream_file(streamer, stream, chunk_ms=1000.0, keep_scores=True,
                                 progress=progress)
            source = {"kind": "recording", "stream": str(stream), "labels_file": str(labels_file)}
            ts = None
    finally:
        torch.set_num_threads(old)
    name = str(stream) if stream is not None else "the test stream"
    if scored.scores is None or not len(scored.scores):
        raise KwsError(f"{name}: too short to give a single score frame")
    duration = scored.duration_s
    late = [o for o in occurrences if o.start >= duration]
    if late:
        raise KwsError(f"{labels_file}: keyword {late[0].keyword!r} at {late[0].start:g} s is "
                       f"past the end of {name} ({duration:.1f} s); wrong labels file?")
    result = sweep(scored.scores, scored.times, labels, occurrences, duration,
                   smoothing_s=smoothing_s, refractory_s=refractory_s)
    result["summary"] = summarize(result)
    result.update(run=str(run), labels=labels, source=source, rule={
        "hit": "a detection of the keyword starting in [onset, end + 1 s]",
        "false_alarm": "any other detection (one detection finds one occurrence)", "tolerance_s": TOLERANCE_S,
        "smoothing_s": smoothing_s, "refractory_s": refractory_s, "window_s": window_s,
        "delay_s": streamer.delay_s, "frame_step_s": streamer.frame_step_s})
    write_json(out_dir / "det.json", result)
    from kwskit.stream.plots import plot_det

    plot_det(result, out_dir / "det.png")
    write_labels_file(out_dir / "stream_labels.tsv", occurrences)
    if ts is not None and save_audio:
        import soundfile as sf

        from kwskit.fsutil import atomic_path

        with atomic_path(out_dir / "stream.flac") as tmp:
            sf.write(str(tmp), np.clip(ts.audio, -1, 1), ts.sample_rate, subtype="PCM_16",
                     format="FLAC")
    return result, out_dir


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


__all__ = ["Occurrence", "TestStream", "build_test_stream", "det_envelope", "evaluate_stream",
           "format_summary",
           "frr_at_fa", "read_labels_file", "score_detections", "speech_bounds",
           "summarize", "sweep", "write_labels_file"]
