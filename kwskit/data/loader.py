"""Dataset and DataLoader: every file is decoded once, then read from an on-disk cache.

The cache holds each split as one int16 array of fixed-length clips (N, clip_samples), stored
as a ``.npy`` and memory-mapped, so DataLoader workers share it without copying. It is keyed by
the *content* of every audio file and the decode parameters: change a file, the label set, the
sample rate or the clip length and a new cache is built; nothing needs to be cleared by hand.
Content hashes and clip lengths are remembered per file by (path, size, mtime), like git's index,
so a warm start reads no audio at all.

Clips shorter than ``min_clip_fraction`` of the clip length (cut off after the header, say) are
skipped with one warning line per split: padded with zeros they would train as silence.

int16 is the source format of Speech Commands (16-bit PCM), so storing it loses nothing for
16 kHz material and halves memory against float32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kwskit import CLIP_SAMPLES, SAMPLE_RATE
from kwskit.data.audio import audio_info, fix_length, load_audio
from kwskit.data.speech_commands import MIN_CLIP_FRACTION
from kwskit.errors import AudioError
from kwskit.fsutil import atomic_path, kwskit_home, write_json

CACHE_VERSION = 1  # bump when the cached representation changes
INT16_SCALE = 32767.0  # cached int16 <-> float32 in [-1, 1]


def default_cache_dir() -> Path:
    return kwskit_home() / "cache"


# ---------------------------------------------------------------------------------------------
# facts about files (content hash, length), remembered by file stat


class _StatMemo:
    """path -> (size, mtime_ns, compute(path)); saved as JSON in the cache folder."""

    def __init__(self, path: Path, compute):
        self.path = path
        self.compute = compute
        try:
            self.table = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.table = {}
        self.dirty = False

    def get(self, file: str):
        st = os.stat(file)
        key = os.path.abspath(file)
        hit = self.table.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        value = self.compute(file)
        self.table[key] = [st.st_size, st.st_mtime_ns, value]
        self.dirty = True
        return value

    def save(self) -> None:
        if self.dirty:
            write_json(self.path, self.table)
            self.dirty = False


# ---------------------------------------------------------------------------------------------
# decoding


def _silence_volume(offset: int) -> float:
    # Silence windows are background noise at a random but fixed level (quiet rooms are common),
    # drawn from the window's offset so every run and every split sees the same clip.
    return float(np.random.default_rng(offset).uniform(0.0, 1.0))


def decode_example(ex, clip_samples: int, sample_rate: int, noise_cache: dict) -> np.ndarray:
    """One Example -> float32 clip of exactly ``clip_samples`` samples."""
    if ex.path is None:
        return np.zeros(clip_samples, np.float32)
    if ex.source == "silence":
        noise = noise_cache.get(ex.path)
        if noise is None:
            noise = noise_cache[ex.path] = load_audio(ex.path, sample_rate)
        window = fix_length(noise[ex.offset : ex.offset + clip_samples], clip_samples)
        return window * _silence_volume(ex.offset)
    return fix_length(load_audio(ex.path, sample_rate), clip_samples)


def _decode_all(examples, clip_samples, sample_rate, out: np.ndarray, desc: str) -> None:
    noise_cache: dict = {}
    # libsndfile and soxr release the GIL, so threads decode in parallel without pickling.
    workers = max(1, min(8, os.cpu_count() or 1))

    def work(i):
        out[i] = np.round(np.clip(decode_example(examples[i], clip_samples, sample_rate, noise_cache),
                                  -1.0, 1.0) * INT16_SCALE).astype(np.int16)

    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(work, range(len(examples))), total=len(examples), desc=desc,
                      unit="clip", disable=None, leave=False):
            pass


def cached_waveforms(examples, *, sample_rate: int = SAMPLE_RATE, clip_samples: int = CLIP_SAMPLES,
                     cache_dir: str | os.PathLike | None = None, desc: str = "decode") -> np.ndarray:
    """int16 array (N, clip_samples) of the examples' audio, from the cache or decoded into it.

    ``cache_dir`` defaults to :func:`default_cache_dir`. The result is a read-only memmap.
    """
    cache_dir = _cache_dir(cache_dir)
    index = _StatMemo(cache_dir / "file-hashes.json",
                      lambda f: hashlib.blake2b(Path(f).read_bytes(), digest_size=16).hexdigest())
    key = hashlib.sha1(f"v{CACHE_VERSION}|{sample_rate}|{clip_samples}".encode())
    for ex in examples:
        content = index.get(ex.path) if ex.path else "zeros"
        key.update(f"|{content}|{ex.source}|{ex.offset}".encode())
    index.save()
    target = cache_dir / f"waves-{key.hexdigest()[:20]}.npy"
    if not target.exists():
        with atomic_path(target) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int16,
                                            shape=(len(examples), clip_samples))
            _decode_all(examples, clip_samples, sample_rate, arr, desc)
            arr.flush()
            del arr
    return np.load(target, mmap_mode="r")


def _cache_dir(cache_dir) -> Path:
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir


def drop_short_clips(index, split: str, min_seconds: float, cache_dir=None):
    """``index`` without the clips of ``split`` shorter than ``min_seconds``, named in one
    warning line on stderr. Lengths come from headers, remembered like the content hashes."""
    lengths = _StatMemo(_cache_dir(cache_dir) / "file-seconds.json", lambda f: audio_info(f).seconds)
    short = []
    for c in index.split(split):
        try:
            if lengths.get(c.path) < min_seconds:
                short.append(c.path)
        except AudioError:
            pass  # decoding names the file if the clip is used (unknown words are sampled)
    lengths.save()
    if not short:
        return index
    names = ", ".join(os.path.relpath(p, index.root) for p in short[:3])
    more = f" and {len(short) - 3} more" if len(short) > 3 else ""
    print(f"kwskit: warning: {index.root}: skipping {len(short)} {split} clip(s) shorter than "
          f"{min_seconds:g} s (data.min_clip_fraction; `kwskit data check` lists them): {names}{more}",
          file=sys.stderr)
    gone = set(short)
    return dataclasses.replace(index, clips=[c for c in index.clips if c.path not in gone])


# ---------------------------------------------------------------------------------------------
# torch Dataset


@dataclass
class SplitData:
    """A split ready for training: labels, examples, their cached audio, background noises."""

    labels: list[str]
    examples: list
    waves: np.ndarray  # int16 (N, clip_samples)
    noises: list[np.ndarray]

    @property
    def targets(self) -> np.ndarray:
        return np.array([ex.label for ex in self.examples], dtype=np.int64)


def load_noises(paths, sample_rate: int = SAMPLE_RATE) -> list[np.ndarray]:
    return [load_audio(p, sample_rate) for p in paths]


class KwsDataset(torch.utils.data.Dataset):
    """(waveform float32 (clip_samples,), label) pairs with seeded, per-epoch augmentation.

    The random draw of item ``i`` depends only on (seed, epoch, i), so results do not depend on
    the number of workers or on resuming mid-training.
    """

    def __init__(self, split: SplitData, augment=None, seed: int = 0):
        self.split = split
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split.examples)

    def __getitem__(self, i: int):
        # one pass: int16 -> float32, then the float32 division (as astype + / would do)
        x = np.divide(self.split.waves[i], np.float32(INT16_SCALE), dtype=np.float32)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            # silence examples get their own noise rules (always noise, silence_rms_dbfs)
            x = self.augment(x, rng, silence=self.split.examples[i].source == "silence")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), int(self.split.examples[i].label)


def prepare_split(index, labels: list[str], split: str, *, silence_share: float = 1.0,
                  unknown_share: float = 1.0, seed: int = 0, sample_rate: int = SAMPLE_RATE,
                  clip_samples: int = CLIP_SAMPLES, cache_dir=None,
                  min_clip_fraction: float = MIN_CLIP_FRACTION, unknown_holdout=(),
                  unknown_extra=(), unknown_extra_share: float = 0.0) -> SplitData:
    """Examples of one split of a scanned data set, decoded through the cache. Clips shorter
    than ``min_clip_fraction`` x ``clip_samples`` are left out (``drop_short_clips``);
    ``unknown_extra`` data sets add ``unknown_extra_share`` x one keyword's clip count of
    ``_unknown_`` examples (``extra_unknown_examples``)."""
    from kwskit.data.speech_commands import (build_examples, extra_unknown_examples,
                                             mean_keyword_count)

    if min_clip_fraction > 0:
        index = drop_short_clips(index, split, min_clip_fraction * clip_samples / sample_rate, cache_dir)
    examples = build_examples(index, labels, split, silence_share=silence_share,
                              unknown_share=unknown_share, seed=seed, clip_samples=clip_samples,
                              unknown_holdout=unknown_holdout)
    if unknown_extra and unknown_extra_share > 0:
        n = round(unknown_extra_share * mean_keyword_count(examples, labels))
        examples = examples + extra_unknown_examples(unknown_extra, labels, n, seed,
                                                     unknown_holdout)
    waves = (cached_waveforms(examples, sample_rate=sample_rate, clip_samples=clip_samples,
                              cache_dir=cache_dir, desc=f"decode {split}")
             if examples else np.zeros((0, clip_samples), np.int16))
    return SplitData(labels=list(labels), examples=examples, waves=waves, noises=[])
