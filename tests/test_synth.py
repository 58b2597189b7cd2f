"""Tests for the eSpeak NG synthetic data set (kwskit.data.synth). Small sets, a few seconds."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kwskit.data import synth
from kwskit.data.synth import (BACKGROUND_DIR, BACKGROUND_FILES, MARKER, Speaker,
                               default_dataset_dir, ensure_default_dataset, plan_word,
                               render_clip, speak, synthesize_dataset)
from kwskit.errors import KwsError

WORDS = ["yes", "stop", "marvin"]
PER_WORD = 5
NAME_RE = re.compile(r"[0-9a-f]{8}_nohash_\d+\.wav")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same small set built with 2 workers and with 1, and once with another seed."""
    root = tmp_path_factory.mktemp("synth")
    out = {}
    for name, seed, workers in (("a", 3, 2), ("b", 3, 1), ("c", 4, 2)):
        out[name] = root / name
        summary = synthesize_dataset(out[name], WORDS, per_word=PER_WORD, seed=seed,
                                     workers=workers, quiet=True)
        assert f"{len(WORDS) * PER_WORD} clips" in summary
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _clips(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for w in WORDS for p in (root / w).glob("*.wav"))


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln]


def _split_of(root: Path) -> dict[str, str]:
    split = {p: "validation" for p in _lines(root / "validation_list.txt")}
    split.update({p: "test" for p in _lines(root / "testing_list.txt")})
    return {p: split.get(p, "train") for p in _clips(root)}


# ----------------------------------------------------------------------------- layout
def test_layout_and_lists(sets):
    root = sets["a"]
    for w in WORDS:
        names = sorted(p.name for p in (root / w).iterdir())
        assert len(names) == PER_WORD
        assert all(NAME_RE.fullmatch(n) for n in names), names
    assert sorted(p.name for p in (root / BACKGROUND_DIR).iterdir()) == sorted(BACKGROUND_FILES)
    val, test = _lines(root / "validation_list.txt"), _lines(root / "testing_list.txt")
    assert val and test and not set(val) & set(test)
    for rel in val + test:
        assert (root / rel).is_file() and "\\" not in rel and rel.split("/")[0] in WORDS
    # every word has clips in all three splits (5 per word -> 3 / 1 / 1)
    split = _split_of(root)
    for w in WORDS:
        got = sorted(s for p, s in split.items() if p.startswith(w + "/"))
        assert got == ["test", "train", "train", "train", "validation"]
    readme = (root / "README.md").read_text()
    assert "--seed 3" in readme and "yes,stop,marvin" in readme
    assert (root / MARKER).is_file()
    with open(root / "clips.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == _clips(root)


def test_clips_are_one_second_16k_mono_and_not_silent(sets):
    for rel in _clips(sets["a"]):
        info = sf.info(str(sets["a"] / rel))
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, 16000)
        assert info.subtype == "PCM_16"
        x, _ = sf.read(str(sets["a"] / rel))
        assert np.sqrt(np.mean(x**2)) > 10 ** (-50 / 20), rel  # above -50 dBFS
        assert np.abs(x).max() < 1.0


def test_word_is_inside_the_clip(sets):
    root = sets["a"]
    with open(root / "clips.csv") as f:
        rows = list(csv.DictReader(f))
    starts = []
    for r in rows:
        start, end = float(r["start_s"]), float(r["end_s"])
        assert 0.02 <= start < end <= 0.98
        x, _ = sf.read(str(root / r["path"]))
        a, b = int(start * 16000), int(end * 16000)
        assert np.sum(x[a:b] ** 2) > 0.8 * np.sum(x**2), r  # the speech is where it says
        energy = np.convolve(x**2, np.ones(320) / 320, "valid")  # 20-ms windows
        assert max(energy[0], energy[-1]) < 0.3 * energy.max(), r  # nothing cut at the edges
        starts.append(start)
    assert np.std(starts) > 0.05  # placed at varied positions, not always at the start


def test_splits_are_speaker_disjoint(sets):
    root = sets["a"]
    speakers = {}
    for rel, split in _split_of(root).items():
        speakers.setdefault(split, set()).add(rel.split("/")[1].split("_nohash_")[0])
    assert set(speakers) == {"train", "validation", "test"}
    assert not speakers["train"] & speakers["validation"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["validation"] & speakers["test"]
    with open(root / "speakers.csv") as f:
        table = {r["speaker"]: r["split"] for r in csv.DictReader(f)}
    for split, ids in speakers.items():
        assert all(table[i] == split for i in ids)


def test_same_seed_same_bytes_for_any_worker_count(sets):
    a, b = _files(sets["a"]), _files(sets["b"])
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_different_seed_gives_different_data(sets):
    a, c = _files(sets["a"]), _files(sets["c"])
    assert _clips(sets["a"]) != _clips(sets["c"])  # other speakers
    assert a["_background_noise_/babble.wav"] != c["_background_noise_/babble.wav"]


def test_background_noise_files(sets):
    centroid = {}
    for name in BACKGROUND_FILES:
        x, sr = sf.read(str(sets["a"] / BACKGROUND_DIR / name))
        assert sr == 16000 and x.ndim == 1 and 30 <= len(x) / sr <= 60
        assert np.sqrt(np.mean(x**2)) > 0.03, name
        spec = np.abs(np.fft.rfft(x[: 16000 * 4])) ** 2
        f = np.fft.rfftfreq(16000 * 4, 1 / 16000)
        centroid[name] = float(np.sum(f * spec) / np.sum(spec))
        if name == "babble.wav":  # band-limited speech: almost nothing above 5 kHz
            assert spec[f > 5000].sum() < 0.01 * spec.sum()
    assert centroid["white_noise.wav"] > centroid["pink_noise.wav"] > centroid["brown_noise.wav"]
    assert centroid["mains_hum.wav"] < 500


# ----------------------------------------------------------------------------- reuse / errors
def test_existing_identical_set_is_skipped(sets):
    root = sets["a"]
    stamp = (root / "yes").stat().st_mtime_ns, (root / MARKER).stat().st_mtime_ns
    msg = synthesize_dataset(root, list(reversed(WORDS)), per_word=PER_WORD, seed=3, quiet=True)
    assert "already holds" in msg
    assert ((root / "yes").stat().st_mtime_ns, (root / MARKER).stat().st_mtime_ns) == stamp


@pytest.mark.parametrize("kw, field", [
    ({"words": ["yes", ""]}, "words"),
    ({"words": []}, "words"),
    ({"words": ["n0"]}, "words"),
    ({"words": ["héllo"]}, "words"),
    ({"words": ["two words"]}, "words"),
    ({"words": ["../up"]}, "words"),
    ({"words": ["yes", "YES"]}, "words"),
    ({"per_word": 0}, "per_word"),
    ({"per_word": 2.5}, "per_word"),
    ({"seed": -1}, "seed"),
    ({"workers": 0}, "workers"),
])
def test_bad_input_names_the_field(tmp_path, kw, field):
    args = {"words": ["yes"], "per_word": 3, "seed": 0, "workers": 1, **kw}
    with pytest.raises(KwsError, match=f"^{field}:"):
        synthesize_dataset(tmp_path / "out", **args)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp folder left


def test_occupied_output_is_refused(tmp_path, sets):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(KwsError, match="not empty"):
        synthesize_dataset(tmp_path / "busy", ["yes"], per_word=3, workers=1)
    (tmp_path / "file").write_text("")
    with pytest.raises(KwsError, match="not a folder"):
        synthesize_dataset(tmp_path / "file", ["yes"], per_word=3, workers=1)
    with pytest.raises(KwsError, match="other parameters"):
        synthesize_dataset(sets["a"], WORDS, per_word=PER_WORD, seed=99, workers=1)
    assert (tmp_path / "busy" / "x.txt").read_text() == "mine"


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_write_metadata", boom)
    with pytest.raises(RuntimeError):
        synthesize_dataset(tmp_path / "out", ["yes"], per_word=3, workers=1, quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_missing_library_is_a_clear_error(tmp_path, monkeypatch):
    import espeakng_loader

    from kwskit.data.espeak import Engine

    bogus = tmp_path / "libespeak-ng.so"
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(bogus))
    with pytest.raises(KwsError, match="cannot load the eSpeak NG library"):
        Engine()


# ----------------------------------------------------------------------------- speakers
def _f0(x: np.ndarray, sr: int = 16000, fmin: float = 40.0, fmax: float = 500.0) -> float:
    """Median pitch (Hz) over the loud frames, by YIN's cumulative-mean-normalised difference
    (de Cheveigne & Kawahara, 2002) in plain numpy: first lag whose dip falls under 0.1."""
    n, hop = 1024, 256
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), n)[::hop]
    loud = np.sqrt((frames**2).mean(1))
    frames = frames[loud > 0.3 * loud.max()]
    w, lags = n // 2, np.arange(1, int(sr / fmin) + 1)
    allowed = lags >= sr / fmax
    pitches = []
    for f in frames:
        d = np.array([np.sum((f[:w] - f[tau:tau + w]) ** 2) for tau in lags])
        cmnd = d * lags / np.maximum(np.cumsum(d), 1e-12)
        ok = np.flatnonzero((cmnd < 0.1) & allowed)  # else the deepest dip in range
        tau = lags[ok[0]] if len(ok) else lags[allowed][np.argmin(cmnd[allowed])]
        pitches.append(sr / tau)
    return float(np.median(pitches))


def test_speakers_sound_different():
    low = Speaker("en-us", "m3", rate=160, pitch=15, pitch_range=40)
    high = Speaker("en-us", "m3", rate=160, pitch=85, pitch_range=40)
    assert low.id != high.id and re.fullmatch(r"[0-9a-f]{8}", low.id)
    assert _f0(speak("marvin", high)) > 1.3 * _f0(speak("marvin", low))
    female = Speaker("en-gb-x-rp", "f2", rate=160, pitch=50, pitch_range=40)
    assert _f0(speak("marvin", female)) > 1.3 * _f0(speak("marvin", Speaker(
        "en-gb-x-rp", "m1", rate=160, pitch=50, pitch_range=40)))
    slow = speak("happy", Speaker("en-us", "m3", rate=100, pitch=50, pitch_range=50))
    fast = speak("happy", Speaker("en-us", "m3", rate=210, pitch=50, pitch_range=50))
    assert len(slow) > 1.5 * len(fast)


def test_long_word_is_sped_up_not_cut():
    spk = Speaker("en-us", "m1", rate=100, pitch=50, pitch_range=50)
    word = "internationalization"
    x = speak(word, spk)
    assert 0.3 * 16000 < len(x) <= 0.96 * 16000
    assert np.sqrt(np.mean(x[-800:] ** 2)) < np.sqrt(np.mean(x**2))  # ends in its own fade
    clip, info = render_clip(word, spk, np.random.default_rng(0))
    assert len(clip) == 16000 and 0.02 <= info["start_s"] < info["end_s"] <= 0.98


def test_plan_word_counts_and_repeats():
    pool = {s: [Speaker("en", "", 150, pitch, p) for p in range(n)]
            for s, n, pitch in (("train", 40, 30), ("validation", 5, 40), ("test", 5, 50))}
    plan = plan_word(7, "yes", 50, pool)
    assert plan == plan_word(7, "yes", 50, pool)  # deterministic
    assert len(plan) == 50 and len(set((s.id, n) for s, n in plan)) == 50
    ids = {s: {p.id for p in pool[s]} for s in pool}
    assert sum(s.id in ids["validation"] for s, _ in plan) == 5
    assert sum(s.id in ids["test"] for s, _ in plan) == 5
    assert max(n for _, n in plan) <= 3  # at most 4 takes per speaker and word
    assert plan != plan_word(8, "yes", 50, pool)


# ----------------------------------------------------------------------------- default set
def test_default_dataset_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KWSKIT_HOME", str(tmp_path))
    assert default_dataset_dir() == tmp_path / "synth-default"
    monkeypatch.delenv("KWSKIT_HOME")
    assert default_dataset_dir() == Path("~/.cache/kwskit/synth-default").expanduser()


def test_ensure_default_dataset_builds_once(monkeypatch, tmp_path):
    monkeypatch.setenv("KWSKIT_HOME", str(tmp_path))
    monkeypatch.setattr(synth, "DEFAULT_WORDS", ("yes", "no"))
    monkeypatch.setattr(synth, "DEFAULT_PER_WORD", 3)
    target = tmp_path / "synth-default"
    target.mkdir()
    (target / "leftover.txt").write_text("incomplete")  # no marker: not a finished set
    out = ensure_default_dataset(quiet=True)
    assert out == target and (out / MARKER).is_file() and not (out / "leftover.txt").exists()
    assert len(list((out / "no").glob("*.wav"))) == 3
    stamp = (out / MARKER).stat().st_mtime_ns
    assert ensure_default_dataset(quiet=True) == out
    assert (out / MARKER).stat().st_mtime_ns == stamp  # complete: not rebuilt
