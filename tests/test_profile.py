"""Profiling: parameter counts, sizes, hand-computed MACs, latency, the whole-model profile."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kwskit.errors import KwsError
from kwskit.eval.profile import (activation_bytes, count_macs, count_params, format_profile,
                                 measure_latency, profile_model, size_bytes)


class ConvLinear(nn.Module):
    """Conv2d(1->8, 3x3, valid) on a 1x10x12 input, ReLU, pool, Linear(8*4*5 -> 5)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)  # out 8x8x10
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)  # 8x4x5
        self.fc = nn.Linear(8 * 4 * 5, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.flatten(1))


def test_params_and_size():
    m = ConvLinear()
    conv, bn, fc = 8 * 9 + 8, 2 * 8, 160 * 5 + 5
    assert count_params(m) == conv + bn + fc
    m.bn.weight.requires_grad_(False)  # frozen: not trainable, still stored
    assert count_params(m) == conv + bn + fc - 8
    # size: every parameter + float buffers (running mean/var), not num_batches_tracked
    floats = conv + bn + fc + 2 * 8
    assert size_bytes(m) == 4 * floats
    assert size_bytes(m, bits=8) == floats
    shared = nn.Sequential(m.fc, m.fc)  # one tensor used twice is counted once
    assert count_params(shared) == fc


def test_macs_conv_linear_hand_computed():
    m = ConvLinear()
    # conv: out elements 8*8*10 * (in_ch 1 / groups 1) * 3*3; linear: 5 outputs * 160 inputs
    expect = 8 * 8 * 10 * 9 + 5 * 160
    assert count_macs(m, torch.randn(1, 1, 10, 12)) == expect
    assert count_macs(m, torch.randn(3, 1, 10, 12)) == 3 * expect  # counts scale with batch


def test_macs_depthwise_and_strided():
    dw = nn.Conv2d(16, 16, (3, 5), padding=(1, 2), groups=16, bias=False)
    assert count_macs(dw, torch.randn(1, 16, 20, 30)) == 16 * 20 * 30 * 1 * 15
    c1 = nn.Conv1d(4, 6, 5, stride=2, groups=2)  # out length (50-5)//2+1 = 23
    assert count_macs(c1, torch.randn(1, 4, 50)) == 6 * 23 * 2 * 5


def test_macs_recurrent():
    t, i, h = 7, 10, 20
    gru = nn.GRU(i, h, batch_first=True)
    assert count_macs(gru, torch.randn(1, t, i)) == t * 3 * h * (i + h)
    lstm = nn.LSTM(i, h, batch_first=True)  # oneDNN's fused kernel must not hide it
    assert count_macs(lstm, torch.randn(1, t, i)) == t * 4 * h * (i + h)
    deep = nn.GRU(i, h, num_layers=2, bidirectional=True, batch_first=True)
    layer1 = 2 * t * 3 * h * (i + h)
    layer2 = 2 * t * 3 * h * (2 * h + h)  # input is both directions concatenated
    assert count_macs(deep, torch.randn(1, t, i)) == layer1 + layer2


class Functional(nn.Module):
    """Matmuls and convolutions outside any module, plus an FFT."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 4, 3))
        self.v = nn.Parameter(torch.randn(9, 6))

    def forward(self, x):  # x (1, 4, 32)
        y = F.conv1d(x, self.w)  # (1, 6, 30): 6*30*4*3
        y = torch.einsum("bct,dc->bdt", y, self.v)  # (1, 9, 30): 9*30*6
        a = y.transpose(1, 2) @ y  # (1, 30, 30) from inner 9: 30*30*9
        s = torch.fft.rfft(x[0, 0])  # real FFT, 32 points
        return a.sum() + s.abs().sum()


def test_macs_functional_calls_and_fft():
    fft = 2.5 * 32 * math.log2(32) / 2  # FFTW's nominal FLOPs for a real FFT, halved
    expect = 6 * 30 * 4 * 3 + 9 * 30 * 6 + 30 * 30 * 9 + fft
    assert count_macs(Functional(), torch.randn(1, 4, 32)) == int(expect)


def test_macs_do_not_touch_model_state():
    m = ConvLinear().train()
    before = m.bn.running_mean.clone()
    count_macs(m, torch.randn(2, 1, 10, 12))
    measure_latency(m, torch.randn(2, 1, 10, 12), warmup=1, repeats=2)
    assert m.training and m.bn.training
    assert torch.equal(m.bn.running_mean, before)  # eval mode: no statistics update


def test_bad_input_is_a_kws_error():
    with pytest.raises(KwsError, match=r"input shape \(1, 3, 10, 12\)"):
        count_macs(ConvLinear(), torch.randn(1, 3, 10, 12))


def test_latency_positive_and_threads_restored():
    threads = torch.get_num_threads()
    lat = measure_latency(ConvLinear(), torch.randn(1, 1, 10, 12), threads=1, warmup=2, repeats=7)
    assert lat["median_ms"] > 0 and lat["p90_ms"] >= lat["median_ms"] >= lat["min_ms"] > 0
    assert lat["threads"] == 1 and lat["repeats"] == 7
    assert torch.get_num_threads() == threads
    with pytest.raises(KwsError, match="threads"):
        measure_latency(ConvLinear(), torch.randn(1, 1, 10, 12), threads=0)


class Frames(nn.Module):
    """Toy front-end: 1-s waveform (B, 16000) -> (B, 1, 10, 100) frames times a learned gain."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(160, 10, bias=False)  # 10 "bands" per 10 ms frame

    def forward(self, wave):
        frames = wave.reshape(wave.shape[0], 100, 160)
        return self.proj(frames).transpose(1, 2).unsqueeze(1)


class TinyKws(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_profile_model_with_frontend():
    d = profile_model(TinyKws(), Frames(), warmup=1, repeats=3)
    model_macs = 4 * 10 * 100 * 9 + 3 * 4
    fe_macs = 100 * 10 * 160
    assert d["input_shape"] == [1, 1, 10, 100]
    assert d["macs"] == model_macs
    assert d["frontend_macs"] == fe_macs
    assert d["macs_with_frontend"] == model_macs + fe_macs
    assert d["params"] == 4 * 9 + 4 + 4 * 3 + 3
    assert d["frontend_params"] == 1600
    assert d["latency_ms"] > 0 and d["latency_with_frontend_ms"] > 0
    assert d["size_bytes_fp32"] == 4 * d["params"]
    assert d["activation_bytes_fp32"] == 4 * (1000 + 4000)  # the conv's input + output
    text = format_profile(d)
    assert "36,012" in text and "front-end" in text and "ms" in text


def test_profile_model_waveform_and_input_shape():
    raw = nn.Sequential(nn.Unflatten(1, (1, 16000)), nn.Conv1d(1, 2, 400, stride=160),
                        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(2, 3))
    d = profile_model(raw, warmup=1, repeats=2)
    frames = (16000 - 400) // 160 + 1
    assert d["macs"] == d["macs_with_frontend"] == 2 * frames * 400 + 3 * 2
    assert d["frontend_macs"] == 0 and d["input_shape"] == [1, 16000]
    assert "front-end" not in format_profile(d)
    d = profile_model(TinyKws(), input_shape=(1, 1, 10, 100), latency=False)
    assert d["macs"] == 4 * 10 * 100 * 9 + 3 * 4
    assert d["latency_ms"] is None and "latency" not in format_profile(d)
    with pytest.raises(KwsError, match="model forward failed"):
        profile_model(TinyKws(), warmup=1, repeats=2)  # a 2-D waveform into a Conv2d


def test_activation_bytes_sequential():
    m = nn.Sequential(nn.Linear(10, 50), nn.ReLU(), nn.Linear(50, 2))
    # largest leaf in+out: ReLU 50 + 50 = 100 values
    assert activation_bytes(m, torch.randn(1, 10)) == 400
