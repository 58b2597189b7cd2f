"""Google Speech Commands (Warden 2018, arXiv:1804.03209) layouts, label sets and splits.

Two layouts are read:

* the train archive (v0.01 / v0.02): one folder per word holding ``<speaker>_nohash_<n>.wav``
  (or ``.flac``), ``_background_noise_/`` with long noise recordings, and
  ``validation_list.txt`` / ``testing_list.txt`` naming clips relative to the root;
* the separate test archive (``speech_commands_test_set_v0.0x``): keyword folders plus
  ``_silence_/`` and ``_unknown_/`` and no lists; every file is a test clip labelled by its
  folder.

Splits come from the lists when they exist (an empty list is authoritative: no clips in that
split). Without lists the data set's own speaker-hash rule (``which_set``) is used, so one
speaker's clips always land in one split.

``build_examples`` turns a split into training items for a label set: keyword clips, a seeded
sample of other words as ``_unknown_``, and ``_silence_`` windows cut from the noise recordings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import posixpath
import re
import warnings
from typing import Sequence
from dataclasses import dataclass, field

import numpy as np

from kwskit import CLIP_SAMPLES, SAMPLE_RATE
from kwskit.data.audio import AUDIO_EXTENSIONS, audio_info
from kwskit.errors import KwsError

SILENCE = "_silence_"
UNKNOWN = "_unknown_"
BACKGROUND = "_background_noise_"
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"

SPLITS = ("training", "validation", "testing")
_SPLIT_ALIASES = {
    "train": "training", "training": "training",
    "validation": "validation", "valid": "validation", "val": "validation",
    "test": "testing", "testing": "testing",
}

_GSC10 = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
_GSC35 = [
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one",
    "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow",
    "yes", "zero",
]
LABEL_SETS: dict[str, list[str]] = {
    "gsc12": _GSC10 + [SILENCE, UNKNOWN],
    "mini10": ["yes", "no", "up", "down", "left", "right", "stop", "go", SILENCE, UNKNOWN],
    "gsc35": list(_GSC35),
}

# Each split owns a disjoint slice of every background-noise recording (fractions of its
# length), so no noise sample heard in training is ever scored in validation or testing.
SILENCE_REGIONS = {"training": (0.0, 0.8), "validation": (0.8, 0.9), "testing": (0.9, 1.0)}

# Clips shorter than this fraction of the clip length are broken (e.g. cut off after the header),
# not short words: `data check` reports them as errors and training skips them.
MIN_CLIP_FRACTION = 0.1

# The data set's README / TF speech_commands input_data.py: "~134M", an upper bound on clips
# per class. The modulus is MAX + 1 (= 2**27); this variant reproduces the official
# validation/testing lists exactly (checked on 11,545 real clips).
_MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
_NOHASH = re.compile(r"_nohash_.*$")


@dataclass(frozen=True)
class Clip:
    """One audio file in the data set."""

    path: str  # root-joined absolute path
    word: str  # folder name
    speaker: str
    split: str  # "training" | "validation" | "testing"


@dataclass(frozen=True)
class Example:
    """One training / evaluation item."""

    path: str | None  # audio file (None = digital silence)
    label: int  # index into the label list
    offset: int = 0  # start, in samples at 16 kHz after resampling (silence windows)
    source: str = "clip"  # "clip" | "silence" | "unknown"


@dataclass
class DatasetIndex:
    """Everything ``scan_dataset`` found under one root, sorted by path."""

    root: str
    layout: str  # "speech_commands" | "test_archive"
    clips: list[Clip]
    background: list[str]  # paths of _background_noise_ files
    has_lists: bool
    empty_words: list[str] = field(default_factory=list)  # word folders without audio
    nested: list[str] = field(default_factory=list)  # sub-folders holding only folders (test/)
    missing_list_entries: list[tuple[str, str]] = field(default_factory=list)  # (list, entry)
    conflicting_list_entries: list[str] = field(default_factory=list)  # in both lists

    def words(self) -> list[str]:
        """Sorted folder names that hold at least one clip."""
        return sorted({c.word for c in self.clips})

    def split(self, name: str) -> list[Clip]:
        """Clips of one split ("train"/"val"/"test" aliases accepted)."""
        name = normalize_split(name)
        return [c for c in self.clips if c.split == name]


# ---------------------------------------------------------------------------------------------
# names


def normalize_split(name: str) -> str:
    """"train"/"training", "validation"/"valid"/"val", "test"/"testing" -> canonical name."""
    key = str(name).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise KwsError(f"split: unknown split {name!r} (use train, validation or test)")
    return _SPLIT_ALIASES[key]


def keyword_labels(labels) -> list[str]:
    """The labels that are words, without the _silence_ / _unknown_ classes."""
    return [w for w in labels if w not in (SILENCE, UNKNOWN)]


def resolve_labels(name_or_list) -> list[str]:
    """A label-set name (``gsc12``, ``mini10``, ``gsc35``) or an explicit word list -> labels.

    An explicit list (python list, or comma-separated string such as ``"yes,no,maybe"``) is used
    in the given order, with ``_silence_`` and ``_unknown_`` appended when neither is in it.
    """
    if isinstance(name_or_list, str):
        text = name_or_list.strip()
        if "," not in text:
            if text.lower() in LABEL_SETS:
                return list(LABEL_SETS[text.lower()])
            valid = ", ".join(sorted(LABEL_SETS))
            raise KwsError(f"labels: unknown label set {text!r} (valid: {valid}; "
                           "or give a comma-separated word list)")
        words = text.split(",")
    elif isinstance(name_or_list, (list, tuple)):
        words = list(name_or_list)
    else:
        raise KwsError(f"labels: expected a label-set name or a list of words, "
                       f"got {type(name_or_list).__name__}")
    words = [str(w).strip() for w in words if str(w).strip()]
    if not words:
        raise KwsError("labels: the word list is empty")
    dups = sorted({w for w in words if words.count(w) > 1})
    if dups:
        raise KwsError(f"labels: repeated word(s) {', '.join(dups)}")
    if SILENCE not in words and UNKNOWN not in words:
        words += [SILENCE, UNKNOWN]
    return words


def speaker_of(filename: str) -> str:
    """Speaker id: the file name before ``_nohash_`` (fallback: the stem)."""
    base = os.path.basename(filename)
    if "_nohash_" in base:
        return base.split("_nohash_", 1)[0]
    return os.path.splitext(base)[0]


def speaker_share_key(speaker: str) -> float:
    """A speaker's stable place in [0, 1) (SHA-1 of the id): keeping the speakers below a share
    gives nested subsets, the same ones on every machine. Salted, because ``which_set`` hashes
    the same id: unsalted, a split's speakers would all sit in one part of the range."""
    digest = hashlib.sha1(("kwskit-speaker:" + speaker).encode("utf-8")).hexdigest()
    return int(digest[:12], 16) / float(16 ** 12)


def with_speaker_share(index: DatasetIndex, split: str, share: float) -> DatasetIndex:
    """``index`` with only ``share`` of ``split``'s speakers (``speaker_share_key``) left in
    that split; the other splits and the noise recordings are untouched."""
    if share >= 1.0:
        return index
    split = normalize_split(split)
    clips = [c for c in index.clips if c.split != split or speaker_share_key(c.speaker) < share]
    return dataclasses.replace(index, clips=clips)


def which_set(filename: str, validation_pct: float = 10.0, testing_pct: float = 10.0) -> str:
    """The data set's own split rule: a stable hash of the speaker part of the file name.

    Hash name = base name with ``_nohash_.*`` removed; its SHA-1 mapped to [0, 100] decides:
    below ``validation_pct`` -> "validation", below ``validation_pct + testing_pct`` ->
    "testing", else "training". All clips of a speaker therefore share one split.
    """
    hash_name = _NOHASH.sub("", os.path.basename(filename))
    digest = int(hashlib.sha1(hash_name.encode("utf-8")).hexdigest(), 16)
    pct = (digest % (_MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / _MAX_NUM_WAVS_PER_CLASS)
    if pct < validation_pct:
        return "validation"
    if pct < validation_pct + testing_pct:
        return "testing"
    return "training"


def list_key(relpath: str) -> str:
    """Key that matches a list entry to a file: '/'-separated relative path without extension."""
    rel = posixpath.normpath(relpath.strip().replace("\\", "/"))
    stem, ext = posixpath.splitext(rel)
    return stem if ext.lower() in AUDIO_EXTENSIONS else rel


def read_list(path: str) -> list[str] | None:
    """Non-blank lines of a split list, or None when the file does not exist."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise KwsError(f"{path}: cannot read split list ({exc})") from None


# ---------------------------------------------------------------------------------------------
# scanning


def _is_audio(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def _subdirs(root: str) -> list[str]:
    with os.scandir(root) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _audio_files(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and _is_audio(e.name))


def scan_dataset(root: str | os.PathLike) -> DatasetIndex:
    """Index a Speech Commands style folder (train-archive or test-archive layout).

    Raises KwsError naming ``root`` when it is missing, not a folder, or has no word folder
    holding .wav/.flac files.
    """
    root_s = os.path.abspath(os.fspath(root))
    if not os.path.exists(root_s):
        raise KwsError(f"{root}: data folder does not exist")
    if not os.path.isdir(root_s):
        raise KwsError(f"{root}: not a folder")
    try:
        folders = _subdirs(root_s)
    except OSError as exc:
        raise KwsError(f"{root}: cannot list folder ({exc.strerror})") from None

    background = []
    if BACKGROUND in folders:
        bg = os.path.join(root_s, BACKGROUND)
        try:
            background = [os.path.join(bg, n) for n in _audio_files(bg)]
        except OSError as exc:
            raise KwsError(f"{bg}: cannot list folder ({exc.strerror})") from None

    lists = {name: read_list(os.path.join(root_s, fname))
             for name, fname in (("validation", VALIDATION_LIST), ("testing", TESTING_LIST))}
    has_lists = any(v is not None for v in lists.values())
    words = [w for w in folders if w != BACKGROUND]
    test_archive = not has_lists and (SILENCE in words or UNKNOWN in words)

    # key -> split, from the lists (a missing list counts as empty when the other exists)
    listed: dict[str, str] = {}
    conflicts = []
    for split in ("validation", "testing"):
        for entry in lists[split] or []:
            key = list_key(entry)
            if listed.get(key, split) != split:
                conflicts.append(entry)
                continue  # keep validation: it was read first
            listed[key] = split

    clips, empty, nested, seen_keys = [], [], [], set()
    for word in words:
        try:
            names = _audio_files(os.path.join(root_s, word))
        except OSError as exc:
            raise KwsError(f"{os.path.join(root_s, word)}: cannot list folder "
                           f"({exc.strerror})") from None
        if not names:
            # `kwskit data download` puts the test archive in OUT/test/: a data set, not a word
            (nested if _subdirs(os.path.join(root_s, word)) else empty).append(word)
            continue
        for name in names:
            key = list_key(f"{word}/{name}")
            seen_keys.add(key)
            if test_archive:
                split = "testing"
            elif has_lists:
                split = listed.get(key, "training")
            else:
                split = which_set(name)
            clips.append(Clip(os.path.join(root_s, word, name), word, speaker_of(name), split))

    if not clips:
        raise KwsError(f"{root}: no word folders with audio files (.wav/.flac) found")

    fname = {"validation": VALIDATION_LIST, "testing": TESTING_LIST}
    missing = [(fname[s], e) for s in ("validation", "testing") for e in lists[s] or []
               if list_key(e) not in seen_keys]
    return DatasetIndex(
        root=root_s,
        layout="test_archive" if test_archive else "speech_commands",
        clips=clips,
        background=background,
        has_lists=has_lists,
        empty_words=empty,
        nested=nested,
        missing_list_entries=missing,
        conflicting_list_entries=sorted(set(conflicts)),
    )


# ---------------------------------------------------------------------------------------------
# examples


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _silence_examples(index: DatasetIndex, split: str, n: int, label: int,
                      rng: np.random.Generator, clip_samples: int) -> list[Example]:
    """``n`` one-clip windows from this split's region of the noise recordings."""
    lo, hi = SILENCE_REGIONS[split]
    spans = []  # (path, first offset, last offset), offsets in samples at SAMPLE_RATE
    for path in index.background:
        info = audio_info(path)  # AudioError names an unreadable noise file
        total = info.frames * SAMPLE_RATE // max(info.sample_rate, 1)
        start, end = math.ceil(lo * total), math.floor(hi * total)
        if end - start >= clip_samples:
            spans.append((path, start, end - clip_samples))
    if not spans:
        why = (f"no {BACKGROUND} folder" if not index.background
               else f"no {BACKGROUND} recording has {clip_samples} samples in its {split} region")
        warnings.warn(f"{index.root}: {why}; {split} {SILENCE} examples are digital zeros",
                      stacklevel=3)
        return [Example(None, label, 0, "silence") for _ in range(n)]
    out = []
    # A file is drawn uniformly (as TF's input_data does for noise), then an offset in its region.
    for _ in range(n):
        path, first, last = spans[int(rng.integers(len(spans)))]
        out.append(Example(path, label, int(rng.integers(first, last + 1)), "silence"))
    return out


def mean_keyword_count(examples: Sequence[Example], labels: Sequence[str]) -> float:
    """Mean clips per keyword label among ``examples``: the unit in which the silence, unknown
    and extra shares are counted."""
    keywords = keyword_labels(labels)
    n = sum(1 for e in examples if e.source == "clip")
    return n / len(keywords) if keywords else 0.0


def build_examples(index: DatasetIndex, labels, split: str, *, silence_share: float = 1.0,
                   unknown_share: float = 1.0, seed: int = 0,
                   clip_samples: int = CLIP_SAMPLES,
                   unknown_holdout: Sequence[str] = ()) -> list[Example]:
    """Items of one split for a label list (or label-set name, resolved by ``resolve_labels``).

    Keyword clips keep their label. Other words are ``_unknown_`` candidates: when the set has
    ``_unknown_``, ``round(unknown_share * mean_keyword_count)`` of them are drawn (seeded, capped
    at what exists), otherwise they are dropped. ``round(silence_share * mean_keyword_count)``
    ``_silence_`` windows of ``clip_samples`` are cut from the split's region of the noise
    recordings (``SILENCE_REGIONS``). mean_keyword_count is the mean clip count over the set's
    keyword labels in this split, so each share of 1.0 adds about one label's worth of items; for
    10 keywords that is ~8.3 % each of the split, close to TF's silence_percentage=10 /
    unknown_percentage=10 recipe. Words in ``unknown_holdout`` are never ``_unknown_``
    candidates (so they can measure how unknown-word rejection generalises). In the test-archive
    layout folder names give the labels and nothing is sampled. Order: keywords and direct
    labels by path, then unknown, then silence.
    """
    labels = resolve_labels(labels) if isinstance(labels, str) else list(labels)
    if len(set(labels)) != len(labels):
        raise KwsError("labels: repeated label in the list")
    split = normalize_split(split)
    lab = {w: i for i, w in enumerate(labels)}
    clips = index.split(split)

    direct, candidates = [], []
    for c in clips:
        if c.word in lab:
            source = {SILENCE: "silence", UNKNOWN: "unknown"}.get(c.word, "clip")
            direct.append(Example(c.path, lab[c.word], 0, source))
        elif c.word != SILENCE and c.word not in unknown_holdout:
            candidates.append(c)  # a _silence_ folder outside the set is never "unknown"

    if index.layout == "test_archive":
        if UNKNOWN in lab:
            direct += [Example(c.path, lab[UNKNOWN], 0, "unknown") for c in candidates]
        return direct

    mean_count = mean_keyword_count(direct, labels)
    split_code = SPLITS.index(split)
    out = list(direct)

    if UNKNOWN in lab and candidates:
        n = min(_round_half_up(unknown_share * mean_count), len(candidates))
        rng = np.random.default_rng([seed, split_code, 1])
        picks = sorted(rng.choice(len(candidates), size=n, replace=False).tolist())
        out += [Example(candidates[i].path, lab[UNKNOWN], 0, "unknown") for i in picks]

    if SILENCE in lab:
        n = _round_half_up(silence_share * mean_count)
        if n > 0:
            rng = np.random.default_rng([seed, split_code, 2])
            out += _silence_examples(index, split, n, lab[SILENCE], rng, clip_samples)
    return out


def extra_unknown_examples(roots: Sequence[str], labels: Sequence[str], n: int, seed: int = 0,
                           holdout: Sequence[str] = ()) -> list[Example]:
    """``n`` ``_unknown_`` examples (seeded) drawn from the clips of other data sets whose words
    are neither labels nor held out; every split of those sets is used (their speakers are not
    the main data set's)."""
    labels = list(labels)
    if UNKNOWN not in labels or n <= 0 or not roots:
        return []
    pool = []
    for root in roots:
        index = scan_dataset(root)  # KwsError for a folder that is not a data set
        pool += [c for c in index.clips
                 if c.word not in labels and c.word not in holdout and c.word != SILENCE]
    if not pool:
        raise KwsError(f"data.unknown_extra: {', '.join(map(str, roots))} hold no words outside "
                       "the labels")
    pool.sort(key=lambda c: c.path)
    rng = np.random.default_rng([seed, 7])
    picks = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [Example(pool[i].path, labels.index(UNKNOWN), 0, "unknown") for i in sorted(picks)]


def load_split(root, labels, split: str, **kw) -> tuple[list[str], list[Example]]:
    """Scan ``root`` and build one split: returns (resolved labels, examples).

    ``labels`` goes through ``resolve_labels``; ``kw`` are ``build_examples`` options.
    """
    labels = resolve_labels(labels)
    return labels, build_examples(scan_dataset(root), labels, split, **kw)
