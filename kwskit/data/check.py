"""``kwskit data check DIR``: list every problem in a Speech Commands style data set.

Errors are things that make results wrong or runs fail: unreadable or empty files, clips far
shorter than 1 s (cut off; training skips them), the same audio or the same speaker in two
splits (leakage), list entries naming missing files, label words without clips. Warnings are
things kwskit copes with but you should know about: other sample rates, several channels or
lengths other than 1 s (resampled / downmixed / padded or cropped on load), duplicates within
one split, empty word folders.

Headers are read with ``audio_info``; duplicates are found by hashing the decoded samples, so
a WAV and a FLAC of the same audio match. Files are probed in a process pool.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import soundfile as sf
from tqdm import tqdm

from kwskit import SAMPLE_RATE
from kwskit.data.audio import audio_info
from kwskit.data.speech_commands import (BACKGROUND, MIN_CLIP_FRACTION, SILENCE, SPLITS, UNKNOWN,
                                         DatasetIndex, keyword_labels, resolve_labels, scan_dataset)
from kwskit.errors import AudioError, KwsError

# Below this many files a pool costs more to start than it saves.
_POOL_MIN_FILES = 400


@dataclass(frozen=True)
class Problem:
    kind: str  # short identifier, e.g. "unreadable", "speaker_leak"
    path: str  # the file (or folder) concerned
    detail: str  # one line, human readable


@dataclass
class CheckReport:
    root: str
    layout: str
    has_lists: bool
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    clips_per_split: dict[str, int] = field(default_factory=dict)
    clips_per_word: dict[str, dict[str, int]] = field(default_factory=dict)  # word -> split -> n
    speakers_per_split: dict[str, int] = field(default_factory=dict)
    background_files: int = 0
    nested: list[str] = field(default_factory=list)  # folders holding only folders (not checked)
    files_checked: int = 0
    seconds: float = 0.0  # wall time of the check

    @property
    def n_clips(self) -> int:
        return sum(self.clips_per_split.values())


@dataclass(frozen=True)
class _Probe:
    sample_rate: int = 0
    channels: int = 0
    frames: int = 0
    digest: str | None = None  # hash of the decoded samples (None: empty or unreadable)
    error: str | None = None


def _probe(path: str) -> _Probe:
    """Header facts plus a hash of the decoded samples; never raises."""
    try:
        info = audio_info(path)
    except AudioError as exc:
        return _Probe(error=exc.reason)
    if info.frames == 0:
        return _Probe(info.sample_rate, info.channels, 0)
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # a valid header over corrupt or truncated data
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return _Probe(info.sample_rate, info.channels, info.frames, error=f"undecodable ({msg})")
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{sr}|{data.shape[1]}|".encode())
    h.update(data.tobytes())  # float32 holds 16/24-bit PCM exactly
    return _Probe(info.sample_rate, info.channels, info.frames, h.hexdigest())


def _probe_all(paths: list[str], workers: int | None) -> list[_Probe]:
    bar = dict(total=len(paths), desc="checking", unit="file", disable=None, leave=False)
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(paths) < _POOL_MIN_FILES:
        return [_probe(p) for p in tqdm(paths, **bar)]
    chunk = max(1, min(256, len(paths) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_probe, paths, chunksize=chunk), **bar))


def check_dataset(root, sample_rate: int = SAMPLE_RATE, labels=None, workers: int | None = None,
                  min_length: float | None = None) -> CheckReport:
    """Check every file under ``root``; ``labels`` (name or list) adds word-coverage checks.

    ``sample_rate`` is the rate kwskit works at (Hz); clips are expected to last 1 s, and
    clips shorter than ``min_length`` of that (default ``MIN_CLIP_FRACTION``) are errors.
    Raises KwsError only when ``root`` is not a data set at all (or an argument is invalid).
    """
    t0 = time.perf_counter()
    min_length = MIN_CLIP_FRACTION if min_length is None else min_length
    if not 0.0 <= min_length < 1.0:
        raise KwsError(f"--min-length: must be a fraction of the clip in [0, 1), got {min_length:g}")
    label_list = resolve_labels(labels) if labels is not None else None
    index = scan_dataset(root)
    rep = CheckReport(index.root, index.layout, index.has_lists)
    err = lambda kind, path, detail: rep.errors.append(Problem(kind, path, detail))  # noqa: E731
    warn = lambda kind, path, detail: rep.warnings.append(Problem(kind, path, detail))  # noqa: E731
    rel = lambda p: os.path.relpath(p, index.root)  # noqa: E731

    _summarise(index, rep)

    paths = [c.path for c in index.clips] + list(index.background)
    probes = _probe_all(paths, workers)
    rep.files_checked = len(paths)
    n_clips = len(index.clips)
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, (path, pr) in enumerate(zip(paths, probes)):
        if pr.error is not None:
            err("unreadable", path, pr.error)
            continue
        if pr.frames == 0:
            err("empty_audio", path, "file holds no samples")
            continue
        if pr.sample_rate != sample_rate:
            warn("sample_rate", path, f"{pr.sample_rate} Hz (resampled to {sample_rate} Hz on load)")
        if pr.channels != 1:
            warn("channels", path, f"{pr.channels} channels (averaged to mono on load)")
        if i < n_clips:
            secs = pr.frames / pr.sample_rate
            if secs < min_length:  # of a 1 s clip
                err("too_short", path, f"{secs:.3f} s, under {min_length:g} s (--min-length); "
                                       "training skips it")
            elif pr.frames != pr.sample_rate:
                fix = "padded" if secs < 1 else "centre-cropped"
                warn("length", path, f"{secs:.3f} s ({fix} to 1 s on load)")
            by_digest[pr.digest].append(i)

    for members in by_digest.values():
        if len(members) < 2:
            continue
        clips = [index.clips[i] for i in members]
        splits = sorted({c.split for c in clips}, key=SPLITS.index)
        if len(splits) > 1:
            others = ", ".join(f"{rel(c.path)} ({c.split})" for c in clips[1:])
            err("duplicate_across_splits", clips[0].path,
                f"({clips[0].split}) same audio as {others}")
        else:
            others = ", ".join(rel(c.path) for c in clips[1:])
            warn("duplicate", clips[0].path, f"same audio as {others} (all {splits[0]})")

    spk: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for c in index.clips:
        spk[c.speaker][c.split].append(c.path)
    for speaker, splits in sorted(spk.items()):
        if len(splits) > 1:
            names = sorted(splits, key=SPLITS.index)
            counts = ", ".join(f"{s} {len(splits[s])}" for s in names)
            # name a clip from the smaller side: that is the one most likely misplaced
            minor = min(names, key=lambda s: (len(splits[s]), SPLITS.index(s)))
            err("speaker_leak", splits[minor][0], f"speaker {speaker} has clips in {counts}")

    for list_name, entry in index.missing_list_entries:
        err("missing_list_entry", os.path.join(index.root, entry),
            f"named in {list_name} but no such audio file")
    for entry in index.conflicting_list_entries:
        err("list_conflict", os.path.join(index.root, entry),
            "named in both validation_list.txt and testing_list.txt (kept as validation)")
    for word in index.empty_words:
        warn("empty_word", os.path.join(index.root, word), "word folder holds no .wav/.flac files")

    if label_list is not None:
        _check_labels(index, rep, label_list, err, warn)
    rep.seconds = time.perf_counter() - t0
    return rep


def _summarise(index: DatasetIndex, rep: CheckReport) -> None:
    per_word: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    speakers = {s: set() for s in SPLITS}
    for c in index.clips:
        per_word[c.word][c.split] += 1
        speakers[c.split].add(c.speaker)
    rep.clips_per_word = dict(sorted(per_word.items()))
    rep.clips_per_split = {s: sum(w[s] for w in per_word.values()) for s in SPLITS}
    rep.speakers_per_split = {s: len(v) for s, v in speakers.items()}
    rep.background_files = len(index.background)
    rep.nested = list(index.nested)


def _check_labels(index, rep, labels, err, warn) -> None:
    words = rep.clips_per_word
    keywords = keyword_labels(labels)
    for w in keywords:
        if w not in words:
            err("missing_label_word", os.path.join(index.root, w), f"label {w!r} has no clips")
            continue
        for s in SPLITS:
            if rep.clips_per_split[s] and not words[w][s]:
                warn("label_word_missing_in_split", os.path.join(index.root, w),
                     f"label {w!r} has no {s} clips")
    others = [w for w in words if w not in labels and w != SILENCE]
    if index.layout == "test_archive":
        for special in (SILENCE, UNKNOWN):
            if special in labels and special not in words:
                warn("missing_label_word", os.path.join(index.root, special),
                     f"label {special!r} has no clips in this test archive")
        return
    if SILENCE in labels and not index.background:
        warn("no_background", os.path.join(index.root, BACKGROUND),
             f"no noise recordings: {SILENCE} examples will be digital zeros")
    if UNKNOWN in labels and not others:
        warn("no_unknown_words", index.root, f"no words outside the label set for {UNKNOWN}")


def print_report(report: CheckReport, limit: int = 20) -> None:
    """Compact summary: totals per split, words, then each problem kind with count and the
    first ``limit`` paths (0 = all)."""
    r = report
    rel = lambda p: os.path.relpath(p, r.root)  # noqa: E731
    lists = "split lists" if r.has_lists else ("folder labels" if r.layout == "test_archive"
                                               else "speaker-hash splits (no lists)")
    print(f"{r.root}: {r.layout} layout, {lists}")
    splits = ", ".join(f"{s} {r.clips_per_split.get(s, 0)}" for s in SPLITS)
    spk = ", ".join(f"{s} {r.speakers_per_split.get(s, 0)}" for s in SPLITS)
    print(f"  clips: {r.n_clips} ({splits})")
    print(f"  speakers: {spk}")
    words = ", ".join(f"{w} {sum(n.values())}" for w, n in r.clips_per_word.items())
    print(f"  words ({len(r.clips_per_word)}): {words}")
    print(f"  background noise files: {r.background_files}")
    if r.nested:
        names = ", ".join(f"{n}/" for n in r.nested)
        print(f"  not checked (folders of folders, check them separately): {names}")
    print(f"  checked {r.files_checked} files in {r.seconds:.1f} s")
    for title, problems in (("errors", r.errors), ("warnings", r.warnings)):
        if not problems:
            continue
        groups: dict[str, list[Problem]] = defaultdict(list)
        for p in problems:
            groups[p.kind].append(p)
        print(f"{title}: {len(problems)}")
        for kind, ps in groups.items():
            print(f"  {kind} ({len(ps)})")
            shown = ps if limit <= 0 else ps[:limit]
            for p in shown:
                print(f"    {rel(p.path)}: {p.detail}")
            if len(shown) < len(ps):
                print(f"    ... {len(ps) - len(shown)} more (--limit 0 shows all)")
    verdict = "FAILED" if r.errors else "OK"
    print(f"{verdict}: {len(r.errors)} errors, {len(r.warnings)} warnings")
