"""The decode-once cache and the Dataset on top of it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

import kwskit.data.loader as loader
from kwskit.data.augment import WaveAugment
from kwskit.data.loader import KwsDataset, cached_waveforms, prepare_split
from kwskit.data.speech_commands import Example, resolve_labels, scan_dataset


def test_cache_is_built_once_and_reused(tiny_data, tmp_path, monkeypatch):
    index = scan_dataset(tiny_data)
    labels = resolve_labels("yes,no")
    first = prepare_split(index, labels, "training", cache_dir=tmp_path)
    assert first.waves.dtype == np.int16 and first.waves.shape == (len(first.examples), 16000)

    def no_decoding(*a, **k):
        raise AssertionError("a warm cache must not decode audio")

    monkeypatch.setattr(loader, "load_audio", no_decoding)
    again = prepare_split(index, labels, "training", cache_dir=tmp_path)
    assert np.array_equal(np.asarray(first.waves), np.asarray(again.waves))
    assert len(list(tmp_path.glob("waves-*.npy"))) == 1


def test_cache_rebuilds_when_content_or_parameters_change(tmp_path):
    audio = tmp_path / "a.wav"
    sf.write(audio, np.full(16000, 0.25, np.float32), 16000, subtype="PCM_16")
    ex = [Example(str(audio), 0)]
    a = np.asarray(cached_waveforms(ex, cache_dir=tmp_path / "c"))
    sf.write(audio, np.full(16000, -0.5, np.float32), 16000, subtype="PCM_16")
    os.utime(audio, ns=(1, 1))  # a new mtime is what tells the hash index to re-read
    b = np.asarray(cached_waveforms(ex, cache_dir=tmp_path / "c"))
    assert a[0, 100] > 0 > b[0, 100]
    c = cached_waveforms(ex, cache_dir=tmp_path / "c", clip_samples=8000)
    assert c.shape == (1, 8000)
    assert len(list((tmp_path / "c").glob("waves-*.npy"))) == 3


def test_odd_audio_is_resampled_downmixed_and_fitted(tmp_path):
    t = np.arange(8000 * 2) / 8000  # 2 s of stereo at 8 kHz
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    long_file = tmp_path / "long_stereo_8k.wav"
    sf.write(long_file, stereo.astype(np.float32), 8000)
    short_file = tmp_path / "short.flac"
    sf.write(short_file, np.full(4000, 0.3, np.float32), 16000)
    waves = np.asarray(cached_waveforms([Example(str(long_file), 0), Example(str(short_file), 1)],
                                        cache_dir=tmp_path / "c")) / 32767.0
    assert waves.shape == (2, 16000)
    spectrum = np.abs(np.fft.rfft(waves[0]))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins: the tone survived resampling
    assert abs(waves[0].std() - 0.5 / np.sqrt(2)) < 0.02  # downmixed, not summed
    assert np.allclose(waves[1, :4000], 0.3, atol=1e-3) and not waves[1, 4000:].any()  # zero-padded


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wav")
    with pytest.raises(Exception) as err:
        cached_waveforms([Example(str(bad), 0)], cache_dir=tmp_path / "c")
    assert "broken.wav" in str(err.value)
    assert not list((tmp_path / "c").glob("waves-*.npy")), "no half-written cache"


def test_dataset_augmentation_depends_on_seed_epoch_and_index_only(tiny_data, tmp_path):
    index = scan_dataset(tiny_data)
    split = prepare_split(index, resolve_labels("yes,no"), "training", cache_dir=tmp_path)
    aug = WaveAugment({"noise_prob": 1.0}, [np.random.default_rng(0).standard_normal(32000).astype(np.float32)])
    ds = KwsDataset(split, augment=aug, seed=3)
    x1, y1 = ds[5]
    ds.set_epoch(1)
    x2, _ = ds[5]
    ds.set_epoch(0)
    x3, y3 = ds[5]
    assert y1 == y3 and np.array_equal(x1.numpy(), x3.numpy())
    assert not np.array_equal(x1.numpy(), x2.numpy())


def test_too_short_clips_are_skipped_with_one_warning(tmp_path, capsys, monkeypatch):
    from conftest import _speaker, build_tiny_dataset

    from kwskit.config import load_config
    from kwskit.train.data import TrainData

    root = build_tiny_dataset(tmp_path / "d", speakers=6, takes=1)
    cut = root / "yes" / f"{_speaker(4)}_nohash_0.wav"  # speaker 4: training
    cut.write_bytes(cut.read_bytes()[:44 + 2 * 128])  # a valid header, then 128 samples
    half = root / "no" / f"{_speaker(5)}_nohash_0.wav"
    sf.write(half, sf.read(half, dtype="float32")[0][:8000], 16000, subtype="PCM_16")

    data = TrainData(load_config(None, ["data.labels=[yes, no]"]), data=str(root))
    paths = [ex.path for ex in data.train.examples]
    assert str(cut) not in paths and str(half) in paths  # 50% is padded, not skipped
    assert len(data.train.waves) == len(paths)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "skipping 1 training clip" in err[0] and f"yes/{cut.name}" in err[0]

    # a warm start remembers the lengths (by path, size, mtime) and reads no headers
    def no_headers(path):
        raise AssertionError(f"header read on a warm start: {path}")

    with monkeypatch.context() as m:  # not monkeypatch.undo(): that would drop KWSKIT_HOME too
        m.setattr(loader, "audio_info", no_headers)
        again = prepare_split(scan_dataset(root), resolve_labels("yes,no"), "training")
    assert [ex.path for ex in again.examples] == paths
    assert f"yes/{cut.name}" in capsys.readouterr().err
    # the rule can be switched off
    kept = prepare_split(scan_dataset(root), resolve_labels("yes,no"), "training", cache_dir=tmp_path / "c",
                         min_clip_fraction=0.0)
    assert str(cut) in [ex.path for ex in kept.examples]
