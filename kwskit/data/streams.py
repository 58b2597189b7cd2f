"""Long test streams for streaming evaluation, and keyword-times files.

Test stream (``build_test_stream``, seeded): a continuous bed of background noise (random
excerpts of the data set's ``_background_noise_`` recordings, each excerpt scaled to one
level; white noise when there are none) into which spoken words are mixed one after another,
with 0.5-2.5 s of noise-only "silence" between them. Half the words are keywords (the model's
labels), half other words of the data set (``_unknown_`` material); all come from one split
(test clips for a model trained on the train split). Each clip is cut to its active part
(frame energy, ``speech_bounds``) plus 100 ms margins and mixed at an SNR drawn uniformly
from the stated range, measured over the word's active part. The word's onset and end are
recorded (``Occurrence``): they are the ground truth that kwskit.eval.detection scores
against.

Keyword-times files (``read_labels_file`` / ``write_labels_file``): the same ground truth for
a recording, as CSV or TSV lines of ``keyword, start, end`` in seconds.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kwskit import SAMPLE_RATE
from kwskit.data.speech_commands import keyword_labels
from kwskit.errors import KwsError

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
                      progress: bool = True, loud_noise: float = 0.0,
                      keyword_share: float = KEYWORD_SHARE) -> TestStream:
    """Generate a long stream from one split of a Speech Commands style data set.

    Args:
        data: data set folder (``scan_dataset`` layout).
        labels: the model's labels; keywords are those not in ``_silence_``/``_unknown_``.
        split: "test" / "validation" / "train" (clips of that split only).
        minutes: stream length.
        snr_db: (low, high) dB range the per-word SNR is drawn from (one value = fixed).
        seed: the same seed gives the same stream, sample for sample.
        loud_noise: share of the pauses between words (those of at least 1 s) filled with a
            burst of background noise at an RMS drawn from -30 to -10 dBFS (0.03-0.3, a loud
            room; clipped at full scale like a real recording): stretches that must not fire.
        keyword_share: share of the words that are keywords; 0 gives keyword-free audio
            (the negatives of hard-negative mining).
    """
    from tqdm import tqdm

    from kwskit.data.audio import load_audio
    from kwskit.data.speech_commands import normalize_split, scan_dataset

    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise KwsError(f"minutes: must be > 0, got {minutes!r}")
    if not (isinstance(loud_noise, (int, float)) and 0.0 <= loud_noise <= 1.0):
        raise KwsError(f"--loud-noise: must be a share in [0, 1], got {loud_noise!r}")
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
    if not by_kw and keyword_share > 0:
        raise KwsError(f"{data}: no clips of the model's keywords ({', '.join(keywords)}) "
                       f"in the {name} split")
    if not others and keyword_share <= 0:
        raise KwsError(f"{data}: no words other than the keywords in the {name} split, so no "
                       "keyword-free stream can be built")
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
        is_kw = not others or rng.random() < keyword_share
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
    if loud_noise > 0:  # after the peak scaling: a loud burst clips, the words stay as they are
        _add_loud_noise(audio, plan, bed, loud_noise, np.random.default_rng([seed, 6]),
                        sample_rate)
    return TestStream(audio.astype(np.float32), sample_rate, occurrences, words, noise_name)


def _add_loud_noise(audio: np.ndarray, plan: list[dict], bed: np.ndarray, share: float,
                    rng: np.random.Generator, sample_rate: int) -> None:
    """Fill ``share`` of the >= 1-s pauses between words with the noise bed scaled to an RMS
    of 0.03-0.3 (uniform in dB), 0.1 s away from either word, faded in and out."""
    ends = [p["pos"] + len(p["cut"]) for p in plan]
    starts = [p["pos"] for p in plan[1:]] + [len(audio)]
    keep = int(0.1 * sample_rate)
    for a, b in zip(ends, starts):
        a, b = a + keep, b - keep
        if b - a < sample_rate - 2 * keep or rng.random() >= share:
            continue
        level = 10 ** (rng.uniform(-30.0, -10.0) / 20.0)
        burst = bed[a:b] * (level / max(_rms(bed[a:b]), 1e-9))
        audio[a:b] = np.clip(audio[a:b] + _fade(burst.astype(np.float32), keep // 2), -1, 1)


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


__all__ = ["GAP_S", "KEYWORD_SHARE", "MARGIN_S", "Occurrence", "TestStream", "build_test_stream",
           "read_labels_file", "speech_bounds", "write_labels_file"]


# ---------------------------------------------------------------------------------- windows
def window_label(words: Sequence[dict], start: float, end: float, labels: Sequence[str]) -> str | None:
    """The label of the stream window [start, end) (seconds), or None when it is ambiguous.

    The rule: a keyword when that keyword's whole active part lies inside the window (the
    latest one when there are two); None when a keyword is cut by the window's edge (neither a
    keyword nor a non-keyword: left out of training); ``_unknown_`` when another word has at
    least half of its active part inside; else ``_silence_``.
    """
    best, unknown = None, False
    for w in words:
        a, b = w["start"], w["end"]
        inside = max(0.0, min(b, end) - max(a, start))
        if inside <= 0:
            continue
        if w["keyword"]:
            if a >= start and b <= end:
                best = w if best is None or w["end"] > best["end"] else best
            else:
                return None
        elif inside >= 0.5 * (b - a):
            unknown = True
    if best is not None:
        return best["word"]
    if unknown:
        return "_unknown_" if "_unknown_" in labels else None
    return "_silence_" if "_silence_" in labels else None


def stream_windows(stream: TestStream, labels: Sequence[str], n: int, seed: int = 0,
                   clip_samples: int = 16000) -> tuple[np.ndarray, list[int]]:
    """``n`` labelled 1-clip windows of ``stream`` (float32 (n', clip_samples), label indices).

    Half the windows (seeded) hold a random keyword whole, at a random place in the window and
    with whatever neighbours it has; the rest start anywhere. Windows ``window_label`` calls
    ambiguous are skipped."""
    rng = np.random.default_rng([seed, 8])
    sr = stream.sample_rate
    keywords = [w for w in stream.words if w["keyword"]]
    x, y = [], []
    tries = 0
    last = len(stream.audio) - clip_samples
    while len(x) < n and tries < 20 * max(n, 1):
        tries += 1
        if keywords and rng.random() < 0.5:
            w = keywords[int(rng.integers(len(keywords)))]
            end = rng.uniform(w["end"], max(w["end"], w["start"] + clip_samples / sr))
            s = min(max(0, int(end * sr) - clip_samples), last)
        else:
            s = int(rng.integers(0, last))
        lab = window_label(stream.words, s / sr, (s + clip_samples) / sr, labels)
        if lab is None:
            continue
        x.append(stream.audio[s:s + clip_samples])
        y.append(list(labels).index(lab))
    return (np.stack(x).astype(np.float32) if x else np.zeros((0, clip_samples), np.float32)), y
