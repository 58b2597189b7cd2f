"""Faster CPU training steps: DepthwiseConv2d's input gradient as a forward convolution, and
bfloat16 autocast on CPUs with native bf16 (train.amp=auto) with the front-end in float32."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kwskit.config import load_config
from kwskit.layers import DepthwiseConv2d, PointwiseConv2d, StreamConv2d
from kwskit.models.io import build_pipeline
from kwskit.train import loop
from kwskit.train.loop import amp_setting, fit
from test_train import TINY

GEOMETRIES = [  # kernel, stride, padding, dilation
    ((1, 3), 1, 0, (1, 8)),  # BC-ResNet's dilated time convolution
    ((3, 1), 1, (1, 0), 1),  # its frequency convolution
    ((3, 1), (2, 1), (1, 0), 1),  # ... in a transition block
    ((5, 5), 1, 2, 1),
    ((3, 3), (2, 3), (1, 1), (2, 1)),
    ((5, 1), (2, 1), (2, 0), 1),
]


@pytest.mark.parametrize("kernel, stride, padding, dilation", GEOMETRIES)
@pytest.mark.parametrize("freq", [20, 21])
def test_depthwise_gradients_match_autograd(kernel, stride, padding, dilation, freq):
    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, kernel, stride=stride, padding=padding, dilation=dilation)
    assert conv._cpu_step
    # frequency-only kernels take the banded matmul
    assert conv._freq_only == (kernel[1] == 1)
    assert conv._time_only == (kernel[0] == 1 and stride == 1 and padding == 0)
    x = torch.randn(3, 6, freq, 40, requires_grad=True)
    y = conv(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    fast = x.grad.clone(), conv.weight.grad.clone()
    x.grad, conv.weight.grad = None, None
    ref = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, 6)
    ref.backward(grad)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)  # summation order may differ
    torch.testing.assert_close(fast[0], x.grad, rtol=1e-5, atol=1e-5)
    # a sum over batch, rows and frames: float32 rounding differs with the summation order
    torch.testing.assert_close(fast[1], conv.weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(3, 6, 20, 40), (2, 6, 1, 33)])
def test_pointwise_gradients_match_autograd(shape):
    torch.manual_seed(0)
    conv = PointwiseConv2d(6, 4)
    x = torch.randn(*shape, requires_grad=True)
    y = conv(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    fast = x.grad.clone(), conv.weight.grad.clone()
    x.grad, conv.weight.grad = None, None
    ref = F.conv2d(x, conv.weight)
    ref.backward(grad)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[0], x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[1], conv.weight.grad, rtol=1e-4, atol=1e-4)
    # outside training: nn.Conv2d's own kernel, same state dict
    plain = nn.Conv2d(6, 4, 1, bias=False)
    plain.load_state_dict(conv.state_dict())
    with torch.no_grad():
        assert torch.equal(conv.eval()(x), plain(x))


def test_depthwise_is_an_nn_conv2d_outside_training():
    conv = DepthwiseConv2d(4, (3, 1), padding=(1, 0)).eval()
    plain = nn.Conv2d(4, 4, (3, 1), padding=(1, 0), groups=4, bias=False)
    plain.load_state_dict(conv.state_dict())  # same keys, same shapes
    x = torch.randn(2, 4, 8, 10)
    assert torch.equal(conv(x), plain(x))
    # padding beyond the kernel's reach has no "full" gradient convolution: plain autograd
    assert not DepthwiseConv2d(4, 3, padding=3)._cpu_step
    # StreamConv2d builds one for depthwise kernels only
    assert isinstance(StreamConv2d(4, 4, (1, 3), groups=4, bias=False).conv, DepthwiseConv2d)
    assert not isinstance(StreamConv2d(4, 8, (1, 3), bias=False).conv, DepthwiseConv2d)


@pytest.mark.parametrize("make", [
    lambda: PointwiseConv2d(5, 3),
    lambda: DepthwiseConv2d(5, (3, 1), stride=(2, 1), padding=(1, 0)),
])
def test_matmul_kernels_under_bf16_autocast_cast_like_a_convolution(make):
    torch.manual_seed(0)
    conv = make()
    x = torch.randn(2, 5, 10, 30, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        ref = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert y.dtype == ref.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and conv.weight.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_time_taps_keep_float64():
    conv = DepthwiseConv2d(3, (1, 3), dilation=(1, 2)).double()
    x = torch.randn(2, 3, 1, 20, dtype=torch.float64, requires_grad=True)
    y = conv(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, F.conv2d(x, conv.weight, None, 1, 0, (1, 2), 3))


def test_depthwise_under_bf16_autocast_casts_like_a_convolution():
    torch.manual_seed(0)
    conv = DepthwiseConv2d(5, (1, 3), dilation=(1, 2))
    x = torch.randn(2, 5, 4, 30, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        ref = F.conv2d(x, conv.weight, None, 1, 0, (1, 2), 5)
    assert y.dtype == ref.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and conv.weight.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_amp_setting(monkeypatch):
    cpu = torch.device("cpu")
    for has in (True, False):
        monkeypatch.setattr(loop, "cpu_has_bf16", lambda has=has: has)
        assert amp_setting("auto", cpu) == (has, torch.bfloat16)
        assert amp_setting(True, cpu)[0] is False  # true keeps its meaning: a GPU only
        assert amp_setting(False, cpu)[0] is False


def test_frontend_stays_float32_under_autocast():
    cfg = load_config(None, ["model.name=bcresnet1"])
    pipe = build_pipeline(cfg, 12).train()
    wave = torch.randn(2, 16000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = pipe.features(wave)
        logits = pipe(wave)
    assert feats.dtype == torch.float32
    assert logits.dtype == torch.bfloat16


def test_bf16_training_learns_and_reports_float32_accuracy(tiny_data, tmp_path, monkeypatch):
    # bf16 autocast forced on (emulated where the CPU lacks bf16 units: slower, same result)
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: True)
    kept = []  # CPU training also keeps freed memory mapped (kwskit.train.allocator)
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: kept.append(1) or True)
    cfg = load_config(None, [*TINY, "train.epochs=8", "train.amp=auto"])  # DS-CNN: depthwise
    out = tmp_path / "run"
    fit(cfg, out, data=str(tiny_data), quiet=True)
    assert kept == [1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best"]["val_acc"] > 0.5  # six classes: chance is 1/6
    state = torch.load(out / "checkpoints" / "best.pt", weights_only=False)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


_WHERE_A_LARGE_TENSOR_LIVES = """
import ctypes, sys, numpy as np
from kwskit.train.allocator import keep_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2 (2.33+)
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]
libc = ctypes.CDLL(None)  # the C library the interpreter runs on, as the allocator uses
try:
    libc.mallinfo2.restype = Info
except AttributeError:
    sys.exit(3)

def after_one(mb=64):
    # (bytes mapped on their own while it lives, heap bytes kept after it is freed)
    before = libc.mallinfo2()
    a = np.ones(mb << 18, dtype=np.float32)
    mapped = libc.mallinfo2().hblkhd - before.hblkhd
    del a
    return mapped, libc.mallinfo2().arena

default = after_one()
if not keep_freed_memory():
    sys.exit(3)
print(*default, *after_one())
"""


def test_keep_freed_memory_serves_large_tensors_from_a_heap_it_keeps():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _WHERE_A_LARGE_TENSOR_LIVES], capture_output=True,
                       text=True, timeout=120)
    if r.returncode == 3:
        pytest.skip("not glibc 2.33+: no mallopt / mallinfo2")
    assert r.returncode == 0, r.stderr
    mapped_default, heap_default, mapped_kept, heap_kept = map(int, r.stdout.split())
    assert mapped_default >= 64 << 20 and heap_default < 64 << 20  # its own mmap, unmapped
    assert mapped_kept == 0 and heap_kept >= 64 << 20  # from the heap, which stays


def test_freq_mean_of_bf16_sums_without_a_float32_copy():
    from kwskit.layers import FreqMean

    torch.manual_seed(0)
    x = torch.randn(3, 4, 20, 30).bfloat16().requires_grad_()
    for keepdim in (True, False):
        y = FreqMean(keepdim=keepdim)(x)
        ref = x.float().mean(dim=-2, keepdim=keepdim)
        assert y.dtype == torch.bfloat16 and y.shape == ref.shape
        torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 1 / 20))  # the gradient of a mean over 20
