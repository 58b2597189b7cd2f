"""`kwskit data check`: every finding on tiny synthetic data sets, and the CLI exit status."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from kwskit.cli import main
from kwskit.data import check as check_mod
from kwskit.data.audio import write_audio
from kwskit.data.check import check_dataset, print_report

SR = 16000


def _clip(path, n=SR, sr=SR, channels=1, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (n, channels) if channels > 1 else (n,)
    write_audio(path, rng.uniform(-0.5, 0.5, shape).astype(np.float32), sr)


@pytest.fixture
def clean(tmp_path):
    """yes/no/bed, speakers 00000000-00000002; speaker 00000001 is validation, rest training."""
    root = tmp_path / "gsc"
    seed = 0
    for word, n in (("yes", 3), ("no", 3), ("bed", 2)):
        for i in range(n):
            seed += 1
            _clip(root / word / f"{i:08x}_nohash_0.wav", seed=seed)
    _clip(root / "_background_noise_" / "noise.wav", n=3 * SR, seed=99)
    (root / "validation_list.txt").write_text(
        "yes/00000001_nohash_0.wav\nno/00000001_nohash_0.wav\nbed/00000001_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("")
    return root


def _kinds(problems):
    return sorted({p.kind for p in problems})


def test_clean_dataset(clean, capsys):
    rep = check_dataset(clean)
    assert rep.errors == [] and rep.warnings == []
    assert rep.clips_per_split == {"training": 5, "validation": 3, "testing": 0}
    assert rep.speakers_per_split == {"training": 2, "validation": 1, "testing": 0}
    assert rep.clips_per_word["yes"] == {"training": 2, "validation": 1, "testing": 0}
    assert rep.background_files == 1 and rep.files_checked == 9
    assert main(["data", "check", str(clean), "--labels", "yes,no"]) == 0
    out = capsys.readouterr().out
    assert "clips: 8 (training 5, validation 3, testing 0)" in out and "OK: 0 errors" in out


def _unreadable(root):
    (root / "yes" / "0000000a_nohash_0.wav").write_bytes(b"RIFF\x00\x01not audio at all" * 8)
    return "yes/0000000a_nohash_0.wav"


def _corrupt_flac(root):
    p = root / "no" / "0000000b_nohash_0.flac"
    _clip(p, seed=41)
    data = bytearray(p.read_bytes())
    data[2000:-100] = bytes(len(data) - 2100)  # keep the header, wipe the frames
    p.write_bytes(bytes(data))
    return "no/0000000b_nohash_0.flac"


def _empty(root):
    sf.write(root / "yes" / "0000000c_nohash_0.wav", np.zeros(0, np.float32), SR)
    return "yes/0000000c_nohash_0.wav"


def _rate(root):
    _clip(root / "yes" / "0000000d_nohash_0.wav", n=8000, sr=8000, seed=42)
    return "yes/0000000d_nohash_0.wav"


def _stereo(root):
    _clip(root / "no" / "0000000e_nohash_0.wav", channels=2, seed=43)
    return "no/0000000e_nohash_0.wav"


def _short(root):
    _clip(root / "bed" / "0000000f_nohash_0.wav", n=SR // 2, seed=44)
    return "bed/0000000f_nohash_0.wav"


def _truncated(root):
    # cut after the header and 128 samples: the header still claims 1 s, libsndfile reads 128
    p = root / "yes" / "00000011_nohash_0.wav"
    _clip(p, seed=47)
    p.write_bytes(p.read_bytes()[:44 + 2 * 128])
    return "yes/00000011_nohash_0.wav"


def _long(root):
    _clip(root / "bed" / "00000010_nohash_0.flac", n=SR + SR // 2, seed=45)
    return "bed/00000010_nohash_0.flac"


def _dup_same_split(root):
    # same decoded audio as a training clip, stored as FLAC, same (training) speaker
    x, sr = sf.read(root / "yes" / "00000000_nohash_0.wav", dtype="float32")
    sf.write(root / "yes" / "00000000_nohash_1.flac", x, sr, subtype="PCM_16")
    return "yes/00000000_nohash_0.wav"


def _dup_across(root):
    # a validation clip copied into a training speaker's file: leakage
    shutil.copy(root / "yes" / "00000001_nohash_0.wav", root / "no" / "00000002_nohash_1.wav")
    return "no/00000002_nohash_1.wav"  # sorts first in its group


def _speaker_leak(root):
    _clip(root / "yes" / "00000001_nohash_1.wav", seed=46)  # not listed -> training
    return "yes/00000001_nohash_1.wav"


def _missing_entry(root):
    with open(root / "validation_list.txt", "a") as f:
        f.write("yes/deadbeef_nohash_0.wav\n")
    return "yes/deadbeef_nohash_0.wav"


def _conflict(root):
    (root / "testing_list.txt").write_text("yes/00000001_nohash_0.wav\n")
    return "yes/00000001_nohash_0.wav"


def _empty_word(root):
    (root / "tree").mkdir()
    return "tree"


def _bad_background(root):
    (root / "_background_noise_" / "broken.wav").write_bytes(b"\x00" * 64)
    return "_background_noise_/broken.wav"


@pytest.mark.parametrize("make,kind,severity", [
    (_unreadable, "unreadable", "errors"),
    (_corrupt_flac, "unreadable", "errors"),
    (_empty, "empty_audio", "errors"),
    (_rate, "sample_rate", "warnings"),
    (_stereo, "channels", "warnings"),
    (_short, "length", "warnings"),  # 50%: padded on load
    (_truncated, "too_short", "errors"),
    (_long, "length", "warnings"),
    (_dup_same_split, "duplicate", "warnings"),
    (_dup_across, "duplicate_across_splits", "errors"),
    (_speaker_leak, "speaker_leak", "errors"),
    (_missing_entry, "missing_list_entry", "errors"),
    (_conflict, "list_conflict", "errors"),
    (_empty_word, "empty_word", "warnings"),
    (_bad_background, "unreadable", "errors"),
])
def test_each_finding(clean, make, kind, severity):
    rel = make(clean)
    rep = check_dataset(clean)
    found = getattr(rep, severity)
    other = rep.warnings if severity == "errors" else rep.errors
    assert _kinds(found) == [kind], found
    assert [p.path for p in found] == [str(clean / rel)]
    assert other == []
    assert main(["data", "check", str(clean)]) == (1 if severity == "errors" else 0)


def test_finding_details(clean):
    _rate(clean), _stereo(clean), _short(clean), _long(clean), _speaker_leak(clean)
    rep = check_dataset(clean)
    detail = {p.path.rsplit("/", 1)[-1]: p.detail for p in rep.warnings + rep.errors}
    assert "8000 Hz" in detail["0000000d_nohash_0.wav"]
    assert "2 channels" in detail["0000000e_nohash_0.wav"]
    assert "0.500 s" in detail["0000000f_nohash_0.wav"]
    assert "1.500 s" in detail["00000010_nohash_0.flac"]
    assert detail["00000001_nohash_1.wav"] == "speaker 00000001 has clips in training 1, validation 3"


def test_label_coverage(clean, capsys):
    rep = check_dataset(clean, labels="yes,no,maybe")
    assert [(p.kind, p.path) for p in rep.errors] == [("missing_label_word", str(clean / "maybe"))]
    assert rep.warnings == []
    (clean / "validation_list.txt").write_text("yes/00000001_nohash_0.wav\n")
    for w in ("no", "bed"):  # keep speaker 00000001 in one split
        (clean / w / "00000001_nohash_0.wav").unlink()
    rep = check_dataset(clean, labels="yes,no")
    assert [(p.kind, p.detail) for p in rep.warnings] == \
        [("label_word_missing_in_split", "label 'no' has no validation clips")]
    shutil.rmtree(clean / "_background_noise_")
    rep = check_dataset(clean, labels=["yes", "no", "bed", "_silence_", "_unknown_"])
    assert _kinds(rep.warnings) == ["label_word_missing_in_split", "no_background",
                                    "no_unknown_words"]
    assert main(["data", "check", str(clean), "--labels", "gsc99"]) == 2
    assert "gsc99" in capsys.readouterr().err


def test_cli_exit_codes_and_limit(clean, tmp_path, capsys):
    for i in range(5):
        _clip(clean / "bed" / f"0000002{i}_nohash_0.wav", n=SR // 4, seed=60 + i)
    _unreadable(clean)
    assert main(["data", "check", str(clean), "--limit", "2"]) == 1
    out = capsys.readouterr().out
    assert "length (5)" in out and "... 3 more" in out and "unreadable (1)" in out
    assert "FAILED: 1 errors, 5 warnings" in out
    print_report(check_dataset(clean), limit=0)
    assert "more" not in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err


def test_test_archive_layout(tmp_path):
    root = tmp_path / "test_set"
    for k, w in enumerate(("yes", "no", "_silence_", "_unknown_")):
        _clip(root / w / f"{k:08x}_nohash_0.wav", seed=k)
    rep = check_dataset(root, labels="gsc12")
    assert rep.layout == "test_archive"
    assert rep.clips_per_split == {"training": 0, "validation": 0, "testing": 4}
    assert {p.path.rsplit("/", 1)[-1] for p in rep.errors} == {
        "up", "down", "left", "right", "on", "off", "stop", "go"}


def test_pool_matches_inline(clean, monkeypatch):
    _short(clean), _dup_across(clean), _unreadable(clean)
    inline = check_dataset(clean, workers=1)
    monkeypatch.setattr(check_mod, "_POOL_MIN_FILES", 0)
    pooled = check_dataset(clean, workers=2)
    assert pooled.errors == inline.errors and pooled.warnings == inline.warnings
    assert len(inline.errors) == 2 and len(inline.warnings) == 1


def test_nested_folder_is_named_not_flagged(clean, capsys):
    _clip(clean / "test" / "_silence_" / "a.wav", seed=70)
    rep = check_dataset(clean)
    assert rep.errors == [] and rep.warnings == [] and rep.nested == ["test"]
    print_report(rep)
    assert "check them separately): test/" in capsys.readouterr().out


def test_too_short_clip_is_an_error_with_a_threshold(clean, capsys):
    rel = _truncated(clean)
    _short(clean)
    rep = check_dataset(clean)
    assert [(p.kind, p.path) for p in rep.errors] == [("too_short", str(clean / rel))]
    assert "0.008 s" in rep.errors[0].detail and "0.1 s" in rep.errors[0].detail
    assert [p.kind for p in rep.warnings] == ["length"]  # the 50% clip
    assert main(["data", "check", str(clean)]) == 1
    out = capsys.readouterr().out
    assert "too_short (1)" in out and rel in out and "FAILED: 1 errors, 1 warnings" in out
    # --min-length moves the line: 0 turns the rule off, 0.6 catches the 50% clip too
    assert main(["data", "check", str(clean), "--min-length", "0"]) == 0
    rep = check_dataset(clean, min_length=0.6)
    assert len(rep.errors) == 2 and rep.warnings == []
    assert main(["data", "check", str(clean), "--min-length", "1"]) == 2
    err = capsys.readouterr().err
    assert "--min-length" in err and "Traceback" not in err
