"""Hard-negative mining: the windows of keyword-free audio that the current model fires on.

A model trained on isolated clips fires in a stream on what it never saw beside a keyword:
other words, half-words, several voices at once, a loud room. Mining, the bootstrapping of
object detection (Sung and Poggio 1998; Felzenszwalb et al. 2010) and the false-positive
rounds of wake-word recipes (openWakeWord trains on the negatives its model fires on), runs the
model being trained over long audio that holds no keyword and adds the windows whose top
keyword probability reaches a threshold to the training set, labelled ``_unknown_`` (at least
half of a word inside, ``kwskit.data.streams.window_label``'s rule) or ``_silence_``.

The negative audio of a round (``negative_audio``), all from the training split:

- half of it is other words (everything but the keywords) with 0.5-2.5 s pauses over the
  background-noise bed at 5-20 dB SNR, 30% of the pauses filled with loud noise (RMS 0.03-0.3);
- the other half is babble: two such word streams (different seeds) summed, the second 0-6 dB
  lower, so words overlap and cut into each other.

Windows are 1 clip long, every ``hop_s``; overlapping firing windows are thinned to the
highest-scoring one per half clip, and the ``limit`` highest are kept. Each round builds new
audio (seed, round), so rounds find new mistakes; the mined windows of every round stay in the
training set and are saved with the run (``hard_negatives.npz``) so ``--resume`` restores them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kwskit.data.loader import INT16_SCALE
from kwskit.data.speech_commands import keyword_labels, mean_keyword_count
from kwskit.data.streams import build_test_stream, window_label
from kwskit.errors import KwsError

HOP_S = 0.1  # window hop over the negative audio [s]


@dataclass
class Mined:
    """Windows mined in one round."""

    waves: np.ndarray  # float32 (n, clip_samples)
    labels: list[int]  # label indices (_unknown_ / _silence_ only)
    scores: np.ndarray  # the top keyword probability of each window
    fired: int  # windows at or above the threshold before thinning and the limit


def negative_audio(root: str, labels, minutes: float, seed: int,
                   sample_rate: int = 16000) -> tuple[np.ndarray, list[dict]]:
    """(float32 audio, placed words) of keyword-free training-split audio (module doc)."""
    half = minutes / 2.0
    common = dict(labels=labels, split="training", minutes=half, snr_db=(5.0, 20.0),
                  sample_rate=sample_rate, progress=False, keyword_share=0.0)
    plain = build_test_stream(root, seed=seed, loud_noise=0.3, **common)
    a = build_test_stream(root, seed=seed + 1, **common)
    b = build_test_stream(root, seed=seed + 2, **common)
    gain = 10 ** (np.random.default_rng([seed, 9]).uniform(-6.0, 0.0) / 20.0)
    babble = np.clip(a.audio + gain * b.audio, -1, 1)
    offset = plain.duration_s
    words = list(plain.words) + [{**w, "start": w["start"] + offset, "end": w["end"] + offset}
                                 for w in a.words + b.words]
    return np.concatenate([plain.audio, babble]).astype(np.float32), words


@torch.no_grad()
def keyword_scores(model: torch.nn.Module, windows: np.ndarray, labels, batch: int = 256) -> np.ndarray:
    """The top keyword probability of each window (n, clip_samples) under ``model`` (eval mode)."""
    kw = [list(labels).index(k) for k in keyword_labels(labels)]
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(windows), batch):
            x = torch.from_numpy(np.ascontiguousarray(windows[i:i + batch], np.float32))
            out.append(torch.softmax(model(x).float(), dim=1)[:, kw].amax(dim=1).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def mine(model: torch.nn.Module, audio: np.ndarray, words: list[dict], labels, threshold: float,
         limit: int, clip_samples: int = 16000, sample_rate: int = 16000,
         hop_s: float = HOP_S) -> Mined:
    """The windows of keyword-free ``audio`` on which ``model`` fires (module doc)."""
    hop = max(1, int(round(hop_s * sample_rate)))
    starts = np.arange(0, max(len(audio) - clip_samples, 0) + 1, hop)
    windows = np.lib.stride_tricks.sliding_window_view(audio, clip_samples)[starts] \
        if len(audio) >= clip_samples else np.zeros((0, clip_samples), np.float32)
    scores = keyword_scores(model, windows, labels)
    firing = np.flatnonzero(scores >= threshold)
    kept: list[int] = []
    for i in firing[np.argsort(-scores[firing], kind="stable")]:
        if len(kept) >= limit:
            break
        if all(abs(int(starts[i]) - int(starts[j])) >= clip_samples // 2 for j in kept):
            kept.append(int(i))  # one window per half clip: the strongest
    x, y, s = [], [], []
    for i in kept:
        t0 = starts[i] / sample_rate
        lab = window_label(words, t0, t0 + clip_samples / sample_rate, labels)
        if lab is None or lab not in labels:
            continue
        x.append(windows[i])
        y.append(list(labels).index(lab))
        s.append(scores[i])
    return Mined(np.stack(x).astype(np.float32) if x else np.zeros((0, clip_samples), np.float32),
                 y, np.asarray(s, np.float32), int(len(firing)))


def mining_epochs(epochs: int, rounds: int) -> dict[int, int]:
    """{epoch index (0-based) at whose start a round runs: round number}, spread evenly."""
    return {epochs * r // (rounds + 1): r for r in range(1, rounds + 1)}


class HardNegativeMiner:
    """The mining rounds of one training run (``cfg.mining``), called at the start of each epoch."""

    def __init__(self, cfg, td, out: Path, quiet: bool = False):
        m = cfg.mining
        if "_unknown_" not in td.labels and "_silence_" not in td.labels:
            raise KwsError("mining.rounds: mined windows are labelled _unknown_ or _silence_, and "
                           f"data.labels has neither ({', '.join(td.labels)})")
        self.cfg, self.quiet = cfg, quiet
        self.schedule = mining_epochs(cfg.train.epochs, m.rounds)
        self.path = Path(out) / "hard_negatives.npz"
        self.limit = max(1, round(m.share * mean_keyword_count(td.train.examples, td.labels)))
        self.saved: dict[str, np.ndarray] | None = None
        self.total = 0

    def restore(self, td, start_epoch: int) -> None:
        """On --resume: put back the windows of the rounds before ``start_epoch``."""
        if not self.path.exists():
            return
        with np.load(self.path) as z:
            saved = {k: z[k] for k in z.files}
        done = [r for e, r in self.schedule.items() if e < start_epoch]
        keep = np.isin(saved["round"], done)
        self.saved = {k: v[keep] for k, v in saved.items()}
        td.add_examples(self.saved["waves"].astype(np.float32) / INT16_SCALE,
                        self.saved["labels"].tolist(), "mined")
        self.total = int(keep.sum())

    def __call__(self, model, td, epoch: int) -> int | None:
        """Mine before epoch ``epoch`` if a round is due; returns the windows added (or None)."""
        r = self.schedule.get(epoch)
        if r is None:
            return None
        m, d = self.cfg.mining, self.cfg.data
        audio, words = negative_audio(td.root, td.labels, m.minutes, self.cfg.train.seed * 1000 + r * 10,
                                      d.sample_rate)
        got = mine(model, audio, words, td.labels, m.threshold, self.limit, d.clip_samples,
                   d.sample_rate)
        td.add_examples(got.waves, got.labels, "mined")
        self.total += len(got.labels)
        self._save(got, r)
        if not self.quiet:
            print(f"mining round {r}: {got.fired} of {len(audio) // int(HOP_S * d.sample_rate)} "
                  f"windows of {m.minutes:g} min keyword-free audio fired at {m.threshold:g}; "
                  f"{len(got.labels)} added ({self.total} in all)", file=sys.stderr)
        return len(got.labels)

    def _save(self, got: Mined, r: int) -> None:
        from kwskit.fsutil import atomic_path

        new = {"waves": np.round(np.clip(got.waves, -1, 1) * INT16_SCALE).astype(np.int16),
               "labels": np.asarray(got.labels, np.int64), "scores": got.scores,
               "round": np.full(len(got.labels), r, np.int64)}
        if self.saved is not None:
            new = {k: np.concatenate([self.saved[k], v]) for k, v in new.items()}
        self.saved = new
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **new)
