"""Speech Commands layouts, label sets, hash split rule and split construction."""

from __future__ import annotations

import hashlib
import re
import warnings

import numpy as np
import pytest

from kwskit.data.audio import write_audio
from kwskit.data.speech_commands import (BACKGROUND, LABEL_SETS, SILENCE, SILENCE_REGIONS,
                                         UNKNOWN, build_examples, load_split, normalize_split,
                                         resolve_labels, scan_dataset, speaker_of, speaker_share_key,
                                         which_set, with_speaker_share)
from kwskit.errors import KwsError

CLIP = 16000


def _speaker_in(split: str, start: int = 0) -> str:
    """First 8-hex-digit speaker id (from ``start``) that the hash rule puts in ``split``."""
    i = start
    while which_set(f"{i:08x}_nohash_0.wav") != split:
        i += 1
    return f"{i:08x}"


def _write(path, n=1600, sr=16000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)
    write_audio(path, x, sr)


def _make(root, files: dict[str, int], ext=".wav", background=(), lists=None):
    """files: word -> number of clips, speakers s0..; lists: {"validation": [...], ...}."""
    seed = 0
    for word, n in files.items():
        (root / word).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seed += 1
            _write(root / word / f"{i % 7:08x}_nohash_{i // 7}{ext}", seed=seed)
    for name, seconds, sr in background:
        _write(root / BACKGROUND / name, n=int(seconds * sr), sr=sr, seed=999)
    for split, entries in (lists or {}).items():
        (root / f"{split}_list.txt").write_text("".join(e + "\n" for e in entries))
    return root


# ---------------------------------------------------------------------------------------------
# hash rule


def test_which_set_matches_independent_computation():
    for name in ["0a7c2a8d_nohash_0.wav", "3cfc6b3a_nohash_4.flac", "bird_speaker_x.wav"]:
        hash_name = re.sub(r"_nohash_.*$", "", name)
        v = int(hashlib.sha1(hash_name.encode()).hexdigest(), 16)
        pct = (v % 2**27) * 100.0 / (2**27 - 1)
        want = "validation" if pct < 10 else "testing" if pct < 20 else "training"
        assert which_set(name) == want
        assert which_set("yes/" + name) == want  # the folder does not matter


def test_which_set_reproduces_official_lists():
    # Speakers that the official v0.01/v0.02 validation_list.txt puts in validation. A modulus
    # of 2**27 - 1 instead of 2**27 would send these to training / testing.
    for spk in ("026290a7", "1942abd7", "22aa3665", "10f2bb12", "6a27a9bf"):
        assert which_set(f"{spk}_nohash_0.wav") == "validation"


def test_which_set_proportions_and_speaker_stability():
    names = [f"{i:08x}" for i in range(3000)]
    splits = [which_set(f"{n}_nohash_0.wav") for n in names]
    frac = {s: splits.count(s) / len(splits) for s in ("training", "validation", "testing")}
    assert 0.08 < frac["validation"] < 0.12 and 0.08 < frac["testing"] < 0.12
    # every clip of a speaker lands where its first clip does
    for n, s in zip(names[:200], splits[:200]):
        assert which_set(f"{n}_nohash_7.flac") == s
    # percentages move the boundaries
    assert which_set(f"{_speaker_in('testing')}_nohash_0.wav", 10, 0) == "training"


def test_speaker_of():
    assert speaker_of("yes/0a7c2a8d_nohash_3.wav") == "0a7c2a8d"
    assert speaker_of("odd_name.flac") == "odd_name"


# ---------------------------------------------------------------------------------------------
# layouts


def test_scan_with_lists(tmp_path):
    root = _make(tmp_path / "d", {"yes": 3, "no": 2, "bed": 1},
                 lists={"validation": ["yes/00000001_nohash_0.wav"],
                        "testing": ["no/00000000_nohash_0.wav"]},
                 background=[("noise.wav", 2.0, 16000)])
    (root / "notes.txt").write_text("not audio")
    (root / "yes" / "readme.md").write_text("ignored")
    idx = scan_dataset(root)
    assert idx.layout == "speech_commands" and idx.has_lists
    assert idx.words() == ["bed", "no", "yes"]
    assert [c.path for c in idx.clips] == sorted(c.path for c in idx.clips)
    split = {f"{c.word}/{c.speaker}": c.split for c in idx.clips}
    assert split == {"bed/00000000": "training", "no/00000000": "testing",
                     "no/00000001": "training", "yes/00000000": "training",
                     "yes/00000001": "validation", "yes/00000002": "training"}
    assert len(idx.background) == 1 and idx.background[0].endswith("noise.wav")
    assert [c.word for c in idx.split("val")] == ["yes"]
    assert len(idx.split("train")) == 4 and len(idx.split("test")) == 1
    assert idx.missing_list_entries == [] and idx.empty_words == []


def test_lists_naming_wav_match_flac_files(tmp_path):
    root = _make(tmp_path / "d", {"yes": 2, "no": 2}, ext=".flac",
                 lists={"validation": ["yes/00000000_nohash_0.wav", "./no/00000001_nohash_0.wav"],
                        "testing": []})
    idx = scan_dataset(root)
    assert all(c.path.endswith(".flac") for c in idx.clips)
    val = sorted(f"{c.word}/{c.speaker}" for c in idx.split("validation"))
    assert val == ["no/00000001", "yes/00000000"]
    assert idx.missing_list_entries == []


def test_empty_testing_list_is_authoritative(tmp_path):
    spk = _speaker_in("testing")
    root = tmp_path / "d"
    _write(root / "yes" / f"{spk}_nohash_0.wav")
    _write(root / "yes" / "00000000_nohash_0.wav", seed=1)
    (root / "validation_list.txt").write_text("yes/00000000_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("")
    idx = scan_dataset(root)
    assert idx.has_lists and idx.split("testing") == []
    assert [c.speaker for c in idx.split("training")] == [spk]
    # the same folder without lists falls back to the hash rule
    (root / "validation_list.txt").unlink()
    (root / "testing_list.txt").unlink()
    idx = scan_dataset(root)
    assert not idx.has_lists
    assert [c.speaker for c in idx.split("testing")] == [spk]


def test_no_lists_uses_hash_rule(tmp_path):
    root = tmp_path / "d"
    speakers = [_speaker_in("training"), _speaker_in("validation"), _speaker_in("testing")]
    for w in ("yes", "no"):
        for k, s in enumerate(speakers):
            for n in range(2):
                _write(root / w / f"{s}_nohash_{n}.wav", seed=k * 10 + n)
    idx = scan_dataset(root)
    assert idx.layout == "speech_commands" and not idx.has_lists
    by_speaker = {}
    for c in idx.clips:
        assert c.split == which_set(c.path)
        by_speaker.setdefault(c.speaker, set()).add(c.split)
    assert all(len(v) == 1 for v in by_speaker.values())
    assert {c.split for c in idx.clips} == {"training", "validation", "testing"}


def test_test_archive_layout(tmp_path):
    root = _make(tmp_path / "t", {"yes": 3, "no": 2, SILENCE: 2, UNKNOWN: 4})
    idx = scan_dataset(root)
    assert idx.layout == "test_archive" and not idx.has_lists
    assert {c.split for c in idx.clips} == {"testing"}
    labels = resolve_labels("yes,no")
    ex = build_examples(idx, labels, "test", seed=3)
    counts = {lab: sum(e.label == labels.index(lab) for e in ex) for lab in labels}
    assert counts == {"yes": 3, "no": 2, SILENCE: 2, UNKNOWN: 4}
    assert all(e.path is not None and e.offset == 0 for e in ex)
    assert {e.source for e in ex if e.label == labels.index(SILENCE)} == {"silence"}
    assert {e.source for e in ex if e.label == labels.index(UNKNOWN)} == {"unknown"}
    # keyword folders outside a smaller set become unknown, no sampling
    ex = build_examples(idx, ["yes", SILENCE, UNKNOWN], "test")
    assert sum(e.label == 2 for e in ex) == 4 + 2


def test_scan_errors(tmp_path):
    with pytest.raises(KwsError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(KwsError, match="not a folder"):
        scan_dataset(f)
    (tmp_path / "empty" / "yes").mkdir(parents=True)
    with pytest.raises(KwsError, match="no word folders with audio"):
        scan_dataset(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# label sets


def test_label_sets():
    assert resolve_labels("gsc12") == ["yes", "no", "up", "down", "left", "right", "on", "off",
                                       "stop", "go", SILENCE, UNKNOWN]
    assert resolve_labels("mini10") == ["yes", "no", "up", "down", "left", "right", "stop", "go",
                                        SILENCE, UNKNOWN]
    g35 = resolve_labels("GSC35")
    assert len(g35) == 35 == len(set(g35)) and SILENCE not in g35 and UNKNOWN not in g35
    assert {"backward", "follow", "forward", "learn", "visual", "sheila"} <= set(g35)
    assert set(resolve_labels("gsc12")[:10]) <= set(g35)
    assert set(LABEL_SETS) == {"gsc12", "mini10", "gsc35"}
    resolve_labels("mini10").append("x")  # callers get a copy
    assert len(LABEL_SETS["mini10"]) == 10


def test_explicit_labels():
    assert resolve_labels("yes,no,maybe") == ["yes", "no", "maybe", SILENCE, UNKNOWN]
    assert resolve_labels(" yes , no ") == ["yes", "no", SILENCE, UNKNOWN]
    assert resolve_labels("yes,") == ["yes", SILENCE, UNKNOWN]  # one keyword: trailing comma
    assert resolve_labels(["cat", "dog"]) == ["cat", "dog", SILENCE, UNKNOWN]
    assert resolve_labels(["cat", UNKNOWN]) == ["cat", UNKNOWN]
    assert resolve_labels([SILENCE, "cat"]) == [SILENCE, "cat"]


@pytest.mark.parametrize("bad,match", [("gsc13", "gsc13.*gsc12, gsc35, mini10"),
                                       ([], "empty"), ("yes,yes", "repeated"), (3, "expected")])
def test_label_errors(bad, match):
    with pytest.raises(KwsError, match=match):
        resolve_labels(bad)


def test_split_names():
    assert [normalize_split(s) for s in ("train", "Training", "val", "valid", "test")] == \
        ["training", "training", "validation", "validation", "testing"]
    with pytest.raises(KwsError, match="dev"):
        normalize_split("dev")


# ---------------------------------------------------------------------------------------------
# split construction


@pytest.fixture
def sc_tree(tmp_path):
    # all clips training (lists exist and are empty): yes 6, no 4 -> mean keyword count 5
    return scan_dataset(_make(tmp_path / "d", {"yes": 6, "no": 4, "bed": 5, "cat": 4},
                              lists={"validation": [], "testing": []},
                              background=[("a.wav", 20.0, 16000), ("b.wav", 10.0, 8000)]))


def test_counts_of_unknown_and_silence(sc_tree):
    labels = resolve_labels("yes,no")
    ex = build_examples(sc_tree, labels, "train", seed=1)
    by = lambda src: [e for e in ex if e.source == src]  # noqa: E731
    assert len(by("clip")) == 10 and len(by("unknown")) == 5 and len(by("silence")) == 5
    assert {e.label for e in by("unknown")} == {labels.index(UNKNOWN)}
    assert {e.label for e in by("silence")} == {labels.index(SILENCE)}
    assert all("/bed/" in e.path or "/cat/" in e.path for e in by("unknown"))
    assert len({e.path for e in by("unknown")}) == 5  # drawn without replacement
    # shares scale (2.5 rounds half up to 3), unknown capped at the 9 candidates
    ex = build_examples(sc_tree, labels, "train", unknown_share=0.5, silence_share=3.0)
    assert sum(e.source == "unknown" for e in ex) == 3
    assert sum(e.source == "silence" for e in ex) == 15
    ex = build_examples(sc_tree, labels, "train", unknown_share=10.0, silence_share=0.0)
    assert sum(e.source == "unknown" for e in ex) == 9
    assert sum(e.source == "silence" for e in ex) == 0
    # without _unknown_ in the set other words are dropped
    ex = build_examples(sc_tree, ["yes", "no", SILENCE], "train")
    assert sum(e.source == "unknown" for e in ex) == 0 and len(ex) == 15
    # empty split -> nothing
    assert build_examples(sc_tree, labels, "validation") == []


def test_determinism(sc_tree):
    a = build_examples(sc_tree, "yes,no", "train", seed=5)
    b = build_examples(sc_tree, "yes,no", "train", seed=5)
    c = build_examples(sc_tree, "yes,no", "train", seed=6)
    assert a == b
    assert [e for e in a if e.source != "clip"] != [e for e in c if e.source != "clip"]
    assert [e for e in a if e.source == "clip"] == [e for e in c if e.source == "clip"]


def test_speaker_share_keeps_nested_subsets_of_one_split(tmp_path):
    train = [_speaker_in("training", 16 * i) for i in range(40)]
    val = _speaker_in("validation")
    files = [f"yes/{s}_nohash_{k}.wav" for s in train for k in range(2)] + [f"yes/{val}_nohash_0.wav"]
    for k, rel in enumerate(files):
        _write(tmp_path / "d" / rel, seed=k)
    index = scan_dataset(tmp_path / "d")
    speakers = {}
    for share in (0.25, 0.5, 1.0):
        kept = with_speaker_share(index, "train", share)
        speakers[share] = {c.speaker for c in kept.split("training")}
        assert kept.split("validation") == index.split("validation")  # other splits untouched
        assert speakers[share] == {s for s in train if speaker_share_key(s) < share}
        # a speaker's clips stay together
        assert len(kept.split("training")) == 2 * len(speakers[share])
    assert speakers[0.25] < speakers[0.5] < speakers[1.0] == set(train)
    assert 4 <= len(speakers[0.25]) <= 18 and 12 <= len(speakers[0.5]) <= 30
    assert with_speaker_share(index, "train", 1.0) is index


def test_silence_windows_disjoint_regions(tmp_path):
    # one speaker per split so every split has keywords; noise 20 s @16k and 10 s @8k
    root = tmp_path / "d"
    for k, split in enumerate(("training", "validation", "testing")):
        _write(root / "yes" / f"{_speaker_in(split)}_nohash_0.wav", seed=k)
    _write(root / BACKGROUND / "a.wav", n=20 * 16000, seed=7)
    _write(root / BACKGROUND / "b.wav", n=10 * 8000, sr=8000, seed=8)
    idx = scan_dataset(root)
    total = {"a.wav": 20 * 16000, "b.wav": 10 * 16000}  # lengths in 16 kHz samples
    spans = {}
    for split in ("training", "validation", "testing"):
        ex = build_examples(idx, "yes,", split, silence_share=200, seed=2)
        sil = [e for e in ex if e.source == "silence"]
        assert len(sil) == 200
        lo, hi = SILENCE_REGIONS[split]
        for e in sil:
            n = total[e.path.rsplit("/", 1)[-1]]
            assert lo * n <= e.offset and e.offset + CLIP <= hi * n
        spans[split] = {name: [(e.offset, e.offset + CLIP) for e in sil if e.path.endswith(name)]
                        for name in total}
        assert all(spans[split][name] for name in total)  # both files used
    for name in total:
        assert max(b for _, b in spans["training"][name]) <= min(a for a, _ in spans["validation"][name])
        assert max(b for _, b in spans["validation"][name]) <= min(a for a, _ in spans["testing"][name])


def test_silence_without_background_is_zeros(tmp_path):
    idx = scan_dataset(_make(tmp_path / "d", {"yes": 4, "no": 2}, lists={"validation": []}))
    with pytest.warns(UserWarning, match="digital zeros"):
        ex = build_examples(idx, "yes,no", "train")
    sil = [e for e in ex if e.source == "silence"]
    assert len(sil) == 3 and all(e.path is None and e.offset == 0 for e in sil)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silence label -> no warning
        build_examples(idx, ["yes", "no", UNKNOWN], "train")


def test_load_split(tmp_path):
    root = _make(tmp_path / "d", {"yes": 3, "no": 3, "up": 2}, lists={"validation": []},
                 background=[("n.wav", 5.0, 16000)])
    labels, ex = load_split(root, "yes,no", "training", silence_share=0.0, seed=1)
    assert labels == ["yes", "no", SILENCE, UNKNOWN]
    assert sum(e.source == "clip" for e in ex) == 6 and sum(e.source == "unknown" for e in ex) == 2
    with pytest.raises(KwsError, match="split"):
        load_split(root, "yes,", "dev")


def test_nested_test_archive_is_not_a_word(tmp_path):
    # `kwskit data download` layout: train archive in OUT/, test archive in OUT/test/
    root = _make(tmp_path / "d", {"yes": 2}, lists={"validation": [], "testing": []})
    _make(root / "test", {"yes": 1, SILENCE: 1})
    (root / "tree").mkdir()
    idx = scan_dataset(root)
    assert idx.nested == ["test"] and idx.empty_words == ["tree"]
    assert idx.words() == ["yes"] and len(idx.clips) == 2
    assert scan_dataset(root / "test").layout == "test_archive"
