"""Streaming layers: chunk-by-chunk stepping equals whole-sequence forward, frame for frame."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import (Delay, FrameSpec, FrameWise, FreqMean, Residual, StreamClassifier, StreamConv1d,
                           StreamConv2d, StreamPool1d, StreamPool2d, StreamSequential, StreamSum,
                           SubSpectralNorm, TimePool, total_lookahead)
from model_checks import run_stream


pytestmark = pytest.mark.usefixtures("one_thread")


# Layers, unlike classifiers, name their timing ``stride`` / ``lookahead``: this proof is theirs.
def tight_warmup(lookahead: int, stride: int) -> int:
    """Output frames a layer must wait: frame j needs input j*stride + lookahead, and a step
    of whole strides ends at input (j + 1)*stride - 1."""
    return max(0, -(-(lookahead + 1) // stride) - 1)


def assert_stream_matches(module, x, atol, seed=0, max_chunk=7, tight=True):
    module.eval()
    with torch.no_grad():
        whole = module(x)
        streamed, warmup = run_stream(module, x, seed, max_chunk)
    n, s = streamed.shape[-1], module.stride
    assert n == x.shape[-1] // s - warmup > 0
    if tight:  # one layer: late by exactly its look-ahead
        assert warmup == tight_warmup(module.lookahead, s)
    else:  # a chain rounds each layer's wait up to its stride
        assert warmup >= tight_warmup(module.lookahead, s)
    assert whole.shape[:-1] == streamed.shape[:-1]
    torch.testing.assert_close(streamed, whole[..., :n], atol=atol, rtol=0)
    return whole, streamed


@pytest.mark.parametrize("padding", ["same", "causal"])
@pytest.mark.parametrize("kernel,stride,dilation", [(3, 1, 1), (4, 1, 1), (5, 2, 1), (3, 1, 3),
                                                    (4, 3, 2), (1, 2, 1)])
def test_conv1d_stream_equals_whole(kernel, stride, dilation, padding):
    torch.manual_seed(0)
    conv = StreamConv1d(3, 5, kernel, stride=stride, dilation=dilation, padding=padding).double()
    x = torch.randn(2, 3, 61, dtype=torch.float64)
    whole, _ = assert_stream_matches(conv, x, atol=1e-12, seed=kernel * 10 + stride)
    assert whole.shape[-1] == -(-61 // stride)  # ceil(T / stride) frames, like TF 'SAME'
    total = dilation * (kernel - 1)
    assert conv.lookahead == (total - total // 2 if padding == "same" else 0)


@pytest.mark.parametrize("padding", ["same", "causal"])
def test_conv2d_stream_equals_whole_with_freq_stride_and_groups(padding):
    torch.manual_seed(1)
    conv = StreamConv2d(4, 8, (3, 5), stride=(2, 2), dilation=(1, 2), groups=4,
                        padding=padding, freq_padding="same").double()
    x = torch.randn(2, 4, 10, 47, dtype=torch.float64)
    whole, _ = assert_stream_matches(conv, x, atol=1e-12)
    assert whole.shape == (2, 8, 5, 24)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_same_padding_matches_pytorch_same():
    torch.manual_seed(2)
    for k, d in [(4, 1), (3, 2), (6, 1)]:
        ours = StreamConv1d(2, 3, k, dilation=d, padding="same")
        ref = nn.Conv1d(2, 3, k, dilation=d, padding="same")
        ref.load_state_dict({"weight": ours.conv.weight, "bias": ours.conv.bias})
        x = torch.randn(1, 2, 20)
        torch.testing.assert_close(ours(x), ref(x))


def test_asymmetric_freq_padding_and_valid():
    torch.manual_seed(3)
    same = StreamConv2d(1, 2, (4, 3), stride=(2, 1), freq_padding="same")  # (1, 2) in freq
    valid = StreamConv2d(1, 2, (5, 3), freq_padding="valid")
    x = torch.randn(1, 1, 10, 12)
    assert same(x).shape == (1, 2, 5, 12)  # ceil(10 / 2)
    assert valid(x).shape == (1, 2, 6, 12)
    assert_stream_matches(same, x, atol=1e-6)


def test_causal_output_ignores_future():
    torch.manual_seed(4)
    net = StreamSequential(StreamConv1d(2, 4, 5, stride=2, padding="causal"), nn.ReLU(),
                           StreamConv1d(4, 4, 3, dilation=2, padding="causal"))
    assert net.lookahead == 0 and net.stride == 2
    x = torch.randn(1, 2, 40, dtype=torch.float64)
    net = net.double().eval()
    y = net(x)
    x2 = x.clone()
    x2[..., 21:] += 10.0  # only frames after input 20 = output 10 * stride change
    y2 = net(x2)
    assert torch.equal(y[..., :11], y2[..., :11])
    assert not torch.equal(y[..., 11:], y2[..., 11:])


def test_lookahead_formula_and_tightness():
    """Output j needs input j*S + LA and nothing later (perturbation test)."""
    torch.manual_seed(5)
    net = StreamSequential(
        StreamConv1d(2, 4, 5, stride=2), nn.Tanh(),             # la 2
        StreamConv1d(4, 4, 3, dilation=2), nn.Tanh(),           # la 2 at stride 2 -> 4
        StreamConv1d(4, 3, 4, stride=2),                        # total 3: la 2 at stride 2 -> 4
    ).double().eval()
    assert net.stride == 4
    assert net.lookahead == 2 + 2 * 2 + 2 * 2 == total_lookahead(list(net))
    x = torch.randn(1, 2, 80, dtype=torch.float64)
    y = net(x)
    for j in (3, 7, 12):
        last = j * net.stride + net.lookahead
        after = x.clone()
        after[..., last + 1:] += 5.0
        assert torch.equal(net(after)[..., j], y[..., j])
        at = x.clone()
        at[..., last] += 5.0
        assert not torch.allclose(net(at)[..., j], y[..., j])


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_pooling_stream_equals_whole(kind):
    torch.manual_seed(6)
    p1 = StreamPool1d(kind, 3, stride=2)
    x = torch.randn(2, 3, 33, dtype=torch.float64)
    whole, _ = assert_stream_matches(p1, x, atol=1e-12)
    assert whole.shape[-1] == 17 and torch.isfinite(whole).all()
    p2 = StreamPool2d(kind, (2, 4), stride=(2, 2), padding="causal")
    x2 = torch.randn(1, 2, 8, 30, dtype=torch.float64)
    w2, _ = assert_stream_matches(p2, x2, atol=1e-12)
    assert w2.shape == (1, 2, 4, 15)


def test_delay():
    d = Delay(3)
    x = torch.arange(10.0).reshape(1, 1, 10)
    assert torch.equal(d(x), x) and d.lookahead == 3 and d.stride == 1
    states, spec = d.stream_init(1, FrameSpec((1,)))
    assert spec.warmup == 3 and [tuple(s.shape) for s in states] == [(1, 1, 3)]
    got = []
    for t in range(10):
        y, states = d.step(x[..., t:t + 1], states)
        got.append(y.item())
    assert got == [0, 0, 0] + list(range(7))  # frame t-3 leaves once frame t has arrived


def test_residual_with_lookahead_mismatch():
    """Identity (look-ahead 0) + dilated 'same' conv (look-ahead 4): the sum delays the shortcut."""
    torch.manual_seed(7)
    res = Residual(StreamSequential(StreamConv1d(3, 3, 5, dilation=2), nn.ReLU()))
    assert res.lookahead == 4
    x = torch.randn(2, 3, 50)
    assert_stream_matches(res, x, atol=1e-5)


def test_sum_of_strided_branches_with_fractional_delay():
    """Look-aheads 1 and 0 at stride 2: a half-frame delay that no Delay(n) could express."""
    torch.manual_seed(8)
    s = StreamSum(StreamConv1d(2, 4, 3, stride=2), StreamConv1d(2, 4, 1, stride=2)).double()
    assert s.stride == 2 and s.lookahead == 1
    x = torch.randn(1, 2, 41, dtype=torch.float64)
    assert_stream_matches(s, x, atol=1e-12)
    with pytest.raises(ValueError, match="strides"):
        StreamSum(StreamConv1d(2, 2, 3, stride=2), StreamConv1d(2, 2, 3))


def test_broadcast_branch_over_frequency():
    """(B, C, 1, T) branch added onto (B, C, F, T) frames, as in BC-ResNet."""
    torch.manual_seed(9)
    branch = StreamSequential(FreqMean(keepdim=True),
                              StreamConv2d(4, 4, (1, 3), dilation=(1, 4), groups=4))
    net = Residual(branch)
    x = torch.randn(2, 4, 5, 40)
    whole, _ = assert_stream_matches(net, x, atol=1e-5)
    assert whole.shape == x.shape


def test_deep_composite_float32():
    """Stride 2, dilation, residuals and causal layers mixed, float32 at atol 1e-5."""
    torch.manual_seed(10)
    net = StreamSequential(
        StreamConv2d(1, 6, (3, 5), stride=(2, 2)), nn.BatchNorm2d(6), nn.ReLU(),
        Residual(StreamSequential(StreamConv2d(6, 6, 3, dilation=(1, 2), groups=6), nn.SiLU())),
        StreamConv2d(6, 6, (3, 4), stride=(1, 2), padding="causal"),
        Residual(StreamSequential(StreamConv2d(6, 6, 3, dilation=(1, 3)), nn.ReLU())),
        StreamPool2d("avg", (1, 3), stride=(1, 1)),
        FreqMean(),
    )
    bn = net[1]
    bn.running_mean.normal_(0, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 1, 8, 300)
    for seed in range(3):
        assert_stream_matches(net, x, atol=1e-5, seed=seed, max_chunk=11, tight=False)


def test_framewise_empty_chunks_and_refusals():
    fw = FrameWise(nn.Sequential(nn.Conv2d(3, 7, (3, 1), stride=(2, 1), padding=(1, 0)),
                                 nn.BatchNorm2d(7)))
    states, spec = fw.stream_init(2, FrameSpec((3, 10)))
    assert states == () and spec.shape == (7, 5)
    assert fw.module[1].num_batches_tracked.item() == 0  # the shape probe touched no stats
    for bad in (nn.Conv1d(2, 2, 3), nn.Conv2d(2, 2, (1, 3)), nn.GRU(2, 2), nn.Linear(2, 2),
                nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.ReLU(), nn.AvgPool1d(2))):
        with pytest.raises(TypeError):
            FrameWise(bad)
    # plain modules given to containers are checked too, and kept as they are
    with pytest.raises(TypeError):
        StreamSequential(nn.Conv1d(2, 2, 3))
    with pytest.raises(TypeError):
        Residual(nn.Sequential(nn.ReLU(), nn.MaxPool1d(3)))
    seq = StreamSequential(nn.Conv1d(2, 3, 1), nn.ReLU())
    assert list(seq.state_dict()) == ["0.weight", "0.bias"]
    states, spec = seq.stream_init(1, FrameSpec((2,)))
    assert states == () and spec == FrameSpec((3,), 0)  # frame-wise: no state, shape probed
    assert fw.module[1].num_batches_tracked.item() == 0


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_timepool_windows(mode):
    torch.manual_seed(11)
    pool = TimePool(mode)
    x = torch.randn(2, 3, 40, dtype=torch.float64)
    reduce = (lambda v: v.mean(-1)) if mode == "avg" else (lambda v: v.amax(-1))
    for window in (1, 5, 40, None):
        frames = pool.frames(x, window)
        for t in (0, 3, 17, 39):
            lo = 0 if window is None else max(0, t - window + 1)
            torch.testing.assert_close(frames[..., t], reduce(x[..., lo:t + 1]))
        if window is not None:  # streams pool a fixed window
            streamed, warmup = run_stream(pool, x, seed=3, window=window)
            assert warmup == 0
            torch.testing.assert_close(streamed, frames, atol=1e-12, rtol=0)
    torch.testing.assert_close(pool.frames(x, 40)[..., -1], pool(x))
    with pytest.raises(ValueError):
        pool.frames(x, 0)


def test_subspectral_norm_is_bandwise_batchnorm():
    torch.manual_seed(12)
    ssn = SubSpectralNorm(3, sub_bands=4)
    bn = ssn.bn
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    ssn.eval()
    x = torch.randn(2, 3, 8, 5)
    y = ssn(x)
    c, band = 2, 3  # channel 2, frequency bins 6..7
    i = c * 4 + band
    ref = (x[:, c, 6:8] - bn.running_mean[i]) / torch.sqrt(bn.running_var[i] + bn.eps)
    torch.testing.assert_close(y[:, c, 6:8], ref * bn.weight[i] + bn.bias[i])
    assert sum(p.numel() for p in ssn.parameters()) == 2 * 3 * 4
    with pytest.raises(KwsError, match="sub-bands"):
        ssn(torch.randn(1, 3, 10, 2))


class _Toy1d(StreamClassifier):
    def __init__(self):
        body = StreamSequential(StreamConv1d(6, 8, 5, stride=2), nn.ReLU(),
                                Residual(StreamConv1d(8, 8, 3, dilation=2)))
        super().__init__(body, nn.Linear(8, 4), in_features=6, input_kind="1d")


def test_stream_classifier_api():
    torch.manual_seed(13)
    model = _Toy1d().eval()
    assert model.lookahead_frames == 2 + 2 * 2 and model.frame_stride == 2
    clip = torch.randn(3, 6, 31)
    t_out = model.num_out_frames(31)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_frames(clip, t_out)[..., -1], model(clip))
        long = torch.randn(2, 6, 200)
        whole = model.forward_frames(long, window=9)
        streamed, warmup = run_stream(model, long, window=9)
    n = streamed.shape[-1]
    assert n == 100 - warmup and warmup == 3  # look-ahead 6 input frames = 3 at stride 2
    torch.testing.assert_close(streamed, whole[..., :n], atol=1e-5, rtol=0)
    with pytest.raises(KwsError, match="expected features"):
        model(torch.randn(1, 5, 20))


def test_timepool_last_mode():
    pool = TimePool("last")
    x = torch.randn(2, 3, 12)
    assert torch.equal(pool(x), x[..., -1]) and torch.equal(pool.frames(x, 4), x)
    assert torch.equal(run_stream(pool, x, seed=5, window=4)[0], x)


class _ToyWave(StreamClassifier):
    def __init__(self):
        body = StreamSequential(StreamConv1d(1, 4, 8, stride=4), nn.ReLU(),
                                StreamConv1d(4, 4, 3, stride=2, padding="causal"))
        super().__init__(body, nn.Linear(4, 3), in_features=1, input_kind="wave", pool="max")


def test_wave_input_classifier_streams():
    torch.manual_seed(14)
    model = _ToyWave().eval()
    assert model.frame_stride == 8 and model.lookahead_frames == 4
    wave = torch.randn(2, 400)
    with torch.no_grad():
        whole = model.forward_frames(wave, window=6)
        streamed, warmup = run_stream(model, wave, seed=2, max_chunk=40, window=6)
        clip = model(wave[:, :160])
    n = streamed.shape[-1]
    assert n == 50 - warmup and warmup == 0 and whole.shape == (2, 3, 50)
    torch.testing.assert_close(streamed, whole[..., :n], atol=1e-5, rtol=0)
    assert clip.shape == (2, 3)
    # (B, 1, S) from KwsPipeline is raw audio too; two channels are not
    assert model(torch.randn(2, 1, 400)).shape == (2, 3)
    with pytest.raises(KwsError, match=r"\(batch, samples\)"):
        model(torch.randn(2, 2, 400))
