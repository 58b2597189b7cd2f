"""Streaming == non-streaming, for every registered model, fed chunks of any size.

THE PROOF: each registered streamable model is built with its recipe's front-end, given
random BatchNorm statistics (so no layer is an identity) and a head scaled to logits of
standard deviation ~3, and fed a 2-3.5-s signal in random chunks (1, 7, 160, 1234, 16000, ...
samples). The concatenated logits equal ``logits_whole`` (front-end and
``backbone.forward_frames`` on the whole signal) to atol 1e-5 on LOGITS, rtol 0, over the
frames both produce; the streamer lacks exactly the last frames that need look-ahead.

Probabilities (the ``step`` output) match ``scores_whole`` to atol 1e-6.

Also here: front-end framing variants (center=True), 1-D and raw-wave toy models, timing
(frames come out the moment their look-ahead has arrived), the long-audio reader and the
CLI path in constant memory.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import tracemalloc
import zlib
from collections import OrderedDict

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from kwskit.config import ExperimentConfig, ModelConfig
from kwskit.errors import KwsError
from kwskit.features.frontend import LogMel, build_frontend
from kwskit.layers import StreamClassifier, StreamConv1d, StreamPool1d, StreamSequential
from kwskit.models import create_model, list_models, model_info
from kwskit.models.io import build_pipeline, save_checkpoint
from kwskit.models.pipeline import KwsPipeline
from kwskit.stream.longaudio import audio_blocks, stream_file
from kwskit.stream.streaming import Streamer, logits_whole, scores_whole, window_frames

SR = 16000
LABELS = ["yes", "no", "up", "down", "_silence_", "_unknown_"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_signal(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Noise with a slow random loudness envelope (features that change over time)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    env = np.interp(np.arange(n), np.linspace(0, n, 13), rng.uniform(0.01, 0.5, 13))
    return (env * rng.standard_normal(n)).astype(np.float32)




def randomize(pipeline: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in pipeline.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.6 + 0.8 * torch.rand(n, generator=g))
                    m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return pipeline.eval()


def scale_head(pipeline: nn.Module, signal: np.ndarray, target_std: float = 3.0) -> None:
    """Scale the last Linear of the head so logits have std ~target_std (a tight atol on
    logits then means something)."""
    lin = [m for m in pipeline.backbone.head.modules() if isinstance(m, nn.Linear)]
    if not lin:
        return
    std = float(np.std(logits_whole(pipeline, signal)))
    if std > 0:
        with torch.no_grad():
            lin[-1].weight.mul_(target_std / std)
            if lin[-1].bias is not None:
                lin[-1].bias.mul_(target_std / std)


def chunk_sizes(total: int, seed: int) -> list[int]:
    """Random chunk sizes summing to ``total``: single samples, odd sizes, whole seconds."""
    rng = np.random.default_rng(seed)
    menu = [1, 7, 160, 1234, 16000, 1, 0]
    sizes, left = [], total
    while left > 0:
        c = menu[int(rng.integers(len(menu)))] if rng.random() < 0.6 else int(rng.integers(1, 4000))
        c = min(c, left)
        sizes.append(c)
        left -= c
    return sizes


def stream_run(streamer: Streamer, signal: np.ndarray, sizes):
    """Feed ``signal`` in chunks of ``sizes`` through ``step``; returns the concatenated
    (logits, probabilities, times)."""
    logits, probs, times, i = [], [], [], 0
    for c in sizes:
        probs.append(streamer.step(signal[i : i + c]))
        logits.append(streamer.last_logits)
        times.append(streamer.last_times)
        i += c
    assert i == len(signal)
    return np.concatenate(logits), np.concatenate(probs), np.concatenate(times)


def recipe_pipeline(name: str, num_classes: int = len(LABELS)) -> KwsPipeline:
    info = model_info(name)
    torch.manual_seed(zlib.crc32(name.encode()))
    cfg = ExperimentConfig(model=ModelConfig(name), frontend=info["frontend"])
    return build_pipeline(cfg, num_classes)


def _is_streamable(name: str) -> bool:
    return bool(getattr(create_model(name, num_classes=2), "streamable", True))


STREAMABLE = [n for n in list_models() if _is_streamable(n)]
NOT_STREAMABLE = [n for n in list_models() if n not in STREAMABLE]


def assert_stream_equals_whole(pipeline: KwsPipeline, signal: np.ndarray, seed: int,
                               window_s: float = 1.0) -> tuple[Streamer, np.ndarray]:
    whole = logits_whole(pipeline, signal, window_s)
    streamer = Streamer(pipeline, window_s=window_s)
    logits, probs, times = stream_run(streamer, signal, chunk_sizes(len(signal), seed))
    n = logits.shape[0]
    # the streamer emits exactly the frames whose step is complete, after the warm-up
    assert n == len(signal) // streamer.unit - streamer.warmup_frames > 0
    # never before the look-ahead arrived: frame j needs feature j*stride + lookahead
    la_samples = streamer.lookahead_frames * streamer.hop + streamer.win
    assert streamer.emit_time(0) * SR >= la_samples - streamer.left_pad
    np.testing.assert_allclose(logits, whole[:n], atol=1e-5, rtol=0)
    np.testing.assert_allclose(probs, scores_whole(pipeline, signal, window_s)[:n],
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(times, streamer.frame_time(np.arange(n)), atol=1e-9)
    return streamer, whole


@pytest.mark.parametrize("name", STREAMABLE)
def test_every_registered_model_streams_exactly(name):
    p = randomize(recipe_pipeline(name), seed=zlib.crc32(name.encode()))
    # long enough for >= 1.2 s of emitted frames after the look-ahead delay (2-3.5 s)
    signal = make_signal(max(2.0, Streamer(p).delay_s + 1.2), seed=1)
    scale_head(p, signal)
    _, whole = assert_stream_equals_whole(p, signal, seed=zlib.crc32(name.encode()))
    assert np.std(whole) > 1.0  # the logits really vary


def test_strided_and_dilated_models_are_in_the_proof():
    have = {n: create_model(n, num_classes=2) for n in STREAMABLE}
    assert any(m.frame_stride > 1 for m in have.values()), "no time-strided model tested"
    dilated = [n for n, m in have.items()
               if any(getattr(c, "dilation", (1,))[-1] > 1 for c in m.modules()
                      if isinstance(c, nn.modules.conv._ConvNd))]
    assert dilated, "no dilated model tested"
    assert {"dscnn_s", "bcresnet1"} <= set(STREAMABLE)


@pytest.mark.parametrize("name", NOT_STREAMABLE or ["<none registered>"])
def test_models_that_cannot_stream_say_why(name):
    if name == "<none registered>":
        class Global(StreamClassifier):
            streamable = False
            stream_note = "attends over the whole clip"

        body = StreamSequential(OrderedDict(conv=StreamConv1d(40, 8, 3)))
        backbone = Global(body, nn.Linear(8, 3), in_features=40, input_kind="1d")
        p = KwsPipeline(LogMel(out_shape="1d"), backbone, "1d")
        note = "attends over the whole clip"
    else:
        p = recipe_pipeline(name)
        note = p.backbone.stream_note
    with pytest.raises(KwsError, match="cannot stream") as err:
        Streamer(p)
    assert note in str(err.value)


def test_centered_frontend_streams_exactly():
    """center=True pads the signal start with zeros; the framing layer starts with them."""
    fe = {"type": "mfcc", "n_mfcc": 10, "win_length": 400, "hop_length": 160, "n_fft": 512,
          "center": True, "pad_mode": "constant"}
    torch.manual_seed(3)
    p = randomize(build_pipeline(ExperimentConfig(model=ModelConfig("dscnn_s"), frontend=fe), 4))
    signal = make_signal(2.0, seed=4)
    scale_head(p, signal)
    streamer, whole = assert_stream_equals_whole(p, signal, seed=5)
    assert streamer.left_pad == 256 - (512 - 400) // 2
    assert streamer.frame_time(0) == pytest.approx((-200 + 200) / SR)  # centred on sample 0


def test_reflect_padded_frontend_says_why_it_cannot_stream():
    """Reflect padding mirrors samples 1..pad into the first frame: samples not yet heard."""
    fe = {"type": "logmel", "n_mels": 40, "center": True, "pad_mode": "reflect"}
    p = build_pipeline(ExperimentConfig(model=ModelConfig("dscnn_s"), frontend=fe), 4)
    with pytest.raises(KwsError, match="reflect padding needs future samples"):
        Streamer(p)
    assert p(torch.zeros(1, SR)).shape == (1, 4)  # whole clips are fine


class Toy(StreamClassifier):
    pass


def toy_1d() -> KwsPipeline:
    """A 1-D (temporal) model: strided, dilated and pooled convs over (B, F, T)."""
    body = StreamSequential(OrderedDict(
        c1=StreamConv1d(20, 12, 5, stride=2), r1=nn.ReLU(),
        c2=StreamConv1d(12, 12, 3, dilation=3), r2=nn.ReLU(),
        pool=StreamPool1d("max", 3, stride=1), c3=StreamConv1d(12, 8, 4, padding="causal")))
    torch.manual_seed(6)
    fe = build_frontend({"type": "logmel", "n_mels": 20, "win_length": 400, "hop_length": 160,
                         "out_shape": "1d"})
    return KwsPipeline(fe, Toy(body, nn.Linear(8, 5), in_features=20, input_kind="1d"), "1d")


def toy_wave() -> KwsPipeline:
    """A raw-waveform model: a strided 'filterbank' conv straight on the samples."""
    body = StreamSequential(OrderedDict(
        fb=StreamConv1d(1, 8, 101, stride=40, padding="same"), r=nn.ReLU(),
        c=StreamConv1d(8, 8, 5, stride=2, dilation=2), r2=nn.ReLU()))
    torch.manual_seed(7)
    return KwsPipeline(build_frontend({"type": "none"}),
                       Toy(body, nn.Linear(8, 4), in_features=1, input_kind="wave"), "wave")


@pytest.mark.parametrize("make", [toy_1d, toy_wave], ids=["1d", "wave"])
def test_1d_and_wave_inputs_stream_exactly(make):
    p = make().eval()
    signal = make_signal(1.5, seed=8)
    scale_head(p, signal)
    streamer, _ = assert_stream_equals_whole(p, signal, seed=9)
    if p.input_kind == "wave":
        assert streamer.frame_step_s == pytest.approx(80 / SR)


@pytest.mark.parametrize("name", STREAMABLE)
def test_frames_come_out_as_soon_as_their_step_is_complete(name):
    """delay_s is exact and tight: frame j appears in the step whose audio completes its
    aligned frame plus the model's look-ahead (rounded up to the next output frame), not
    later."""
    s = Streamer(randomize(recipe_pipeline(name)))
    tight = (s.win / 2 + s.lookahead_frames * s.hop) / SR
    assert tight - 1e-9 <= s.delay_s < tight + s.frame_step_s
    signal = make_signal(2.5, seed=2)
    for i in range(0, len(signal), s.unit):
        s.step(signal[i : i + s.unit])
        # frames computable from the samples so far = those whose emit time has passed
        ready = int(np.sum(s.emit_time(np.arange(500)) * SR <= s.samples_in + 1e-6))
        assert s.frames_out == ready, f"after {s.samples_in} samples"
    assert s.frames_out > 3


def test_whole_clip_reference_is_the_clip_classifier():
    """On a 1-s clip, the last frame of scores_whole is the pipeline's clip prediction."""
    p = randomize(recipe_pipeline("bcresnet1"))
    clip = make_signal(1.0, seed=11)
    scale_head(p, clip)
    frames = scores_whole(p, clip)
    assert frames.shape[0] == window_frames(p, 1.0) == 98
    with torch.no_grad():
        clip_probs = torch.softmax(p(torch.from_numpy(clip)[None]), -1)[0].numpy()
    np.testing.assert_allclose(frames[-1], clip_probs, atol=1e-6)


def test_reset_empty_and_bad_input():
    p = randomize(recipe_pipeline("dscnn_s"))
    s = Streamer(p)
    sig = make_signal(1.5, seed=12)
    first = s.step(sig)
    assert s.step(np.zeros(0, np.float32)).shape == (0, len(LABELS))
    s.reset()
    assert s.frames_out == 0 and s.samples_in == 0
    np.testing.assert_array_equal(s.step(torch.from_numpy(sig)), first)
    with pytest.raises(KwsError, match="1-D"):
        s.step(np.zeros((2, 100), np.float32))
    with pytest.raises(KwsError, match="float"):
        s.step(np.zeros(100, np.int16))
    with pytest.raises(KwsError, match="window_s"):
        Streamer(p, window_s=0.0)
    with pytest.raises(KwsError, match="sample_rate"):
        Streamer(p, sample_rate=8000)


# ----------------------------------------------------------------------------- end of a file
@pytest.mark.parametrize("make", [lambda: randomize(recipe_pipeline("bcresnet1")),
                                  lambda: randomize(recipe_pipeline("dscnn_s")), toy_wave],
                         ids=["bcresnet1", "dscnn_s", "wave"])
def test_flush_scores_a_file_to_its_end(make):
    """flush() emits every frame up to the last sample, as the signal plus zeros would."""
    p = make().eval()
    signal = make_signal(1.0, seed=13)
    s = Streamer(p)
    stream_run(s, signal, chunk_sizes(len(signal), seed=14))
    before = s.frames_out
    pad = s.flush_samples()
    assert 0 < pad <= s.delay_s * SR + 1
    tail = s.flush()
    n = s.frames_out
    times = s.frame_times()
    assert n == before + tail.shape[0] and s.samples_in == len(signal)
    # the last frame lies within one frame step of the end, none past it
    assert 1.0 - s.frame_step_s < times[-1] <= 1.0
    ref = logits_whole(p, np.concatenate([signal, np.zeros(pad, np.float32)]))
    np.testing.assert_allclose(s.last_logits, ref[before:n], atol=1e-5, rtol=0)
    with pytest.raises(KwsError, match="reset"):
        s.step(signal[:10])
    s.reset()
    assert s.step(signal).shape[0] == before  # a new stream after reset


def energy_detector() -> KwsPipeline:
    """Class 0 ('yes') wins when a frame is loud: log-mel energy through a 'same' conv whose
    only weight is its centre tap, so each frame sees only itself but the model still
    declares 0.3 s of look-ahead (like the non-causal convolutions of BC-ResNet)."""
    conv = StreamConv1d(20, 1, 61, padding="same")
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.weight[0, :, 30] = 1.0 / 20
        conv.conv.bias.fill_(0.0)
    head = nn.Linear(1, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        head.bias.copy_(torch.tensor([4.0, -4.0]))  # loud (mean log-mel > -4) -> 'yes'
    fe = build_frontend({"type": "logmel", "n_mels": 20, "win_length": 400, "hop_length": 160,
                         "out_shape": "1d"})
    body = StreamSequential(OrderedDict(c=conv))
    return KwsPipeline(fe, Toy(body, head, in_features=20, input_kind="1d", pool="max"),
                       "1d").eval()


def test_a_one_word_file_finds_its_word(tmp_path):
    """A 1-s file whose 'word' sits in its last 0.25 s: without the flush at the end of the
    file the frames that see it are never computed (the model waits 0.31 s for look-ahead)."""
    from kwskit.stream.detector import Detector

    rng = np.random.default_rng(15)
    clip = (0.002 * rng.standard_normal(SR)).astype(np.float32)
    clip[int(0.72 * SR) : int(0.95 * SR)] *= 200.0
    sf.write(str(tmp_path / "word.wav"), clip, SR)
    p = energy_detector()
    streamer = Streamer(p)
    assert streamer.delay_s > 0.3
    det = Detector(["yes", "_silence_"], threshold=0.5, refractory_s=1.0)
    res = stream_file(streamer, tmp_path / "word.wav", det, keep_scores=True, progress=False)
    assert [d.keyword for d in res.detections] == ["yes"]
    assert 0.65 < res.detections[0].start < 0.85
    assert res.duration_s == pytest.approx(1.0) and res.times[-1] > 0.98


# ----------------------------------------------------------------------------- long audio
def _write_long(path, seconds: float, rate: int, channels: int, seed: int = 0,
                block_s: float = 10.0) -> None:
    """A long WAV written block by block (never whole in memory)."""
    rng = np.random.default_rng(seed)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=channels, subtype="PCM_16") as f:
        left = int(seconds * rate)
        while left > 0:
            n = min(left, int(block_s * rate))
            f.write((0.05 * rng.standard_normal((n, channels))).astype(np.float32))
            left -= n


def test_audio_blocks_resample_and_downmix(tmp_path):
    rng = np.random.default_rng(3)
    t = np.arange(int(2.5 * 44100)) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone + 0.01 * rng.standard_normal(len(t))], axis=1)
    sf.write(str(tmp_path / "s.wav"), stereo.astype(np.float32), 44100, subtype="FLOAT")
    blocks = list(audio_blocks(tmp_path / "s.wav", block_s=0.1))
    x = np.concatenate(blocks)
    assert abs(len(x) - 2.5 * SR) <= 2 and len(blocks) >= 20
    # a 440 Hz tone survives: its spectral peak sits at 440 Hz
    spec = np.abs(np.fft.rfft(x[4000:36000]))
    assert abs(np.argmax(spec) * SR / 32000 - 440) < 1.0
    with pytest.raises(KwsError, match="unreadable"):
        next(audio_blocks(tmp_path / "missing.wav"))


def make_run(tmp_path, name: str = "dscnn_s", labels=LABELS):
    cfg = ExperimentConfig(model=ModelConfig(name), frontend=model_info(name)["frontend"])
    torch.manual_seed(0)
    p = randomize(build_pipeline(cfg, len(labels)))
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "best.pt",
                    {"model": p.state_dict(), "config": cfg.to_dict(), "labels": list(labels)})
    return run


def stream_cli(argv: list[str]) -> int:
    from kwskit.stream.cli import add_parsers

    parser = argparse.ArgumentParser(prog="kwskit")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_stream_command_json_and_plot(tmp_path, capsys):
    run = make_run(tmp_path)
    sf.write(str(tmp_path / "a.wav"), make_signal(4.0, seed=1), SR)
    _write_long(tmp_path / "b.flac", 3.0, 22050, 2)
    # threshold 0: every keyword is 'above' from the first frame to the last -> one span each
    assert stream_cli(["stream", str(run), str(tmp_path / "a.wav"), str(tmp_path / "b.flac"),
                       "--json", "--threshold", "0", "--plot", str(tmp_path / "p.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [f["source"] for f in out["files"]] == [str(tmp_path / "a.wav"), str(tmp_path / "b.flac")]
    for f in out["files"]:
        assert sorted(d["keyword"] for d in f["detections"]) == sorted(LABELS[:4])
        assert all(d["start"] < 0.1 and d["end"] > f["duration_s"] - 1.0 for d in f["detections"])
    assert out["files"][1]["duration_s"] == pytest.approx(3.0, abs=1e-3)
    assert (tmp_path / "p_a.png").stat().st_size > 10000
    assert (tmp_path / "p_b.png").stat().st_size > 10000
    # a threshold no probability reaches: nothing
    assert stream_cli(["stream", str(run), str(tmp_path / "a.wav"), "--threshold", "1.0"]) == 0
    assert "0 detections" in capsys.readouterr().out


def test_stream_command_errors(tmp_path, monkeypatch):
    import sys

    run = make_run(tmp_path)
    with pytest.raises(KwsError, match="no such audio file"):
        stream_cli(["stream", str(run), str(tmp_path / "none.wav")])
    with pytest.raises(KwsError, match="is a directory; give audio files"):
        stream_cli(["stream", str(run), str(tmp_path)])
    with pytest.raises(KwsError, match="--threshold"):
        stream_cli(["stream", str(run), "--mic", "--threshold", "maybe"])
    with pytest.raises(KwsError, match="unknown keyword"):
        stream_cli(["stream", str(run), "--mic", "--threshold", "0.6,yes=0.9,maybe=0.2"])
    (tmp_path / "bad.wav").write_text("not audio")
    with pytest.raises(KwsError, match="bad.wav"):
        stream_cli(["stream", str(run), str(tmp_path / "bad.wav")])
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails like a missing package
    with pytest.raises(KwsError, match="no audio input device"):
        stream_cli(["stream", str(run), "--mic", "--seconds", "1"])


class FakeSoundDevice:
    """Stands in for the ``sounddevice`` module: a 48 kHz-only input device whose stream
    calls back from its own thread with 10 ms blocks of a known signal."""

    def __init__(self, signal_48k: np.ndarray):
        self.signal = signal_48k
        self.opened = {}

    def query_devices(self, kind=None):
        return {"name": "fake mic", "default_samplerate": 48000.0}

    def check_input_settings(self, samplerate=None, **kw):
        if samplerate != 48000:
            raise ValueError("Invalid sample rate")

    def InputStream(self, samplerate, channels, dtype, blocksize, callback):  # noqa: N802
        self.opened = {"samplerate": samplerate, "blocksize": blocksize}
        fake = self

        class Stream:
            def __enter__(self):
                self.stop = threading.Event()

                def run():
                    for i in range(0, len(fake.signal), blocksize):
                        if self.stop.is_set():
                            return
                        callback(fake.signal[i : i + blocksize, None], blocksize, None, None)

                self.thread = threading.Thread(target=run, daemon=True)
                self.thread.start()
                return self

            def __exit__(self, *exc):
                self.stop.set()
                self.thread.join()

        return Stream()


def test_mic_path_with_a_fake_device(tmp_path, monkeypatch, capsys):
    import sys

    run = make_run(tmp_path)
    rng = np.random.default_rng(5)
    fake = FakeSoundDevice((0.05 * rng.standard_normal(48000 * 5)).astype(np.float32))
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    assert stream_cli(["stream", str(run), "--mic", "--seconds", "2.5", "--json",
                       "--threshold", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert fake.opened == {"samplerate": 48000, "blocksize": 4800}  # 100 ms at 48 kHz
    (res,) = out["files"]
    assert res["source"] == "microphone"
    assert res["duration_s"] == pytest.approx(2.5, abs=0.02)  # resampled to 16 kHz
    assert sorted(d["keyword"] for d in res["detections"]) == sorted(LABELS[:4])


def test_parse_threshold():
    from kwskit.stream.cli import parse_threshold

    assert parse_threshold("0.7") == 0.7
    assert parse_threshold("yes=0.8,no=0.6") == {"yes": 0.8, "no": 0.6}
    assert parse_threshold("0.4, yes=0.9") == {"yes": 0.9, "*": 0.4}
    for bad in ("", "1.5", "yes=x"):
        with pytest.raises(KwsError):
            parse_threshold(bad)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def test_long_audio_streams_in_constant_memory(tmp_path):
    """6 minutes of 8 kHz stereo through the CLI's file path: Python/numpy peak memory and
    process RSS stay flat (decoding the whole file would take ~23 MB as float32)."""
    run = make_run(tmp_path)
    from kwskit.models.io import load_model

    p, _, labels = load_model(run)
    streamer = Streamer(p)
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    _write_long(short, 30.0, 8000, 2)
    _write_long(long, 360.0, 8000, 2)
    stream_file(streamer, short, chunk_ms=1000, progress=False)  # warm up caches

    peaks = {}
    for name, path in (("short", short), ("long", long)):
        rss = [_rss_bytes()]
        stop = threading.Event()

        def sample(rss=rss, stop=stop):
            while not stop.is_set():
                rss.append(_rss_bytes())
                time.sleep(0.05)

        th = threading.Thread(target=sample)
        th.start()
        tracemalloc.start()
        try:
            res = stream_file(streamer, path, chunk_ms=1000, progress=False)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            stop.set()
            th.join()
        peaks[name] = (peak, rss)
        assert res.duration_s == pytest.approx({"short": 30.0, "long": 360.0}[name], abs=0.01)
    py_short, py_long = peaks["short"][0], peaks["long"][0]
    assert py_long < 4e6, f"python/numpy peak {py_long / 1e6:.1f} MB"
    assert py_long - py_short < 1e6  # 12x the audio, the same memory
    rss = [r for r in peaks["long"][1] if r is not None]
    if rss:
        assert max(rss) - rss[0] < 15e6, f"RSS grew {(max(rss) - rss[0]) / 1e6:.1f} MB"
