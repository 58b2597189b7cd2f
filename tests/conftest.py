"""Shared fixtures: a tiny Speech Commands style data set of synthetic 'words'.

Each word is a distinct two-tone chirp pattern, each speaker shifts it in pitch and timing, so
a small model can learn the classes in a few epochs -- quick enough for end-to-end tests.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from kwskit.data.audio import write_audio

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N runs N workers side by side: one torch thread each, or they fight over the cores
    torch.set_num_threads(1)

SR = 16000
WORDS = {"yes": (500, 900), "no": (1400, 700), "up": (2200, 2600), "down": (900, 300), "bed": (1800, 1800)}


def _speaker(i: int) -> str:
    return hashlib.sha1(f"spk{i}".encode()).hexdigest()[:8]


def make_clip(word: str, speaker: int, take: int) -> np.ndarray:
    rng = np.random.default_rng([speaker, take, len(word)])
    f0, f1 = WORDS[word]
    shift = 1.0 + 0.06 * ((speaker % 5) - 2)  # speaker pitch
    n = int(SR * rng.uniform(0.45, 0.6))
    t = np.arange(n) / SR
    freq = (f0 + (f1 - f0) * t / t[-1]) * shift
    tone = np.sin(2 * np.pi * np.cumsum(freq) / SR) * np.hanning(n)
    clip = np.zeros(SR, np.float32)
    start = int(rng.integers(0, SR - n))
    clip[start : start + n] = 0.5 * tone
    return clip + rng.normal(0, 0.01, SR).astype(np.float32)


def build_tiny_dataset(root, speakers: int = 10, takes: int = 2, lists: bool = True):
    """GSC layout: word folders, _background_noise_, validation/testing lists (2 speakers each)."""
    root.mkdir(parents=True, exist_ok=True)
    val, test = [], []
    for word in WORDS:
        (root / word).mkdir(exist_ok=True)
        for s in range(speakers):
            for k in range(takes):
                rel = f"{word}/{_speaker(s)}_nohash_{k}.wav"
                write_audio(root / rel, make_clip(word, s, k))
                if s in (0, 1):
                    val.append(rel)
                elif s in (2, 3):
                    test.append(rel)
    bg = root / "_background_noise_"
    bg.mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    write_audio(bg / "white_noise.wav", (0.1 * rng.standard_normal(SR * 20)).astype(np.float32))
    if lists:
        (root / "validation_list.txt").write_text("\n".join(val) + "\n")
        (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    # Caches and the built-in data set go to a per-session temp folder, never the user's home.
    monkeypatch.setenv("KWSKIT_HOME", str(tmp_path_factory.getbasetemp() / "kwskit-home"))
    # Training picks one thread without sampling the machine's load: fast and deterministic.
    monkeypatch.setenv("KWSKIT_THREADS", "1")


@pytest.fixture
def one_thread():
    """One torch thread for the test (restored after). Model and layer tests run tiny ops: one
    thread is faster and immune to other processes hogging the cores. Use it per file with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
