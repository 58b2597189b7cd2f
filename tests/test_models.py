"""Model registry, DS-CNN and BC-ResNet sizes against their papers, and the streaming proof."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import StreamConv2d
from kwskit.models import create_model, list_models, model_info
from model_checks import (assert_clip_is_last_frame, assert_model_streams, assert_trains,
                          eval_model, feature_shape, n_params, recipe_frames)

pytestmark = pytest.mark.usefixtures("one_thread")

DSCNN = ["dscnn_s", "dscnn_m", "dscnn_l"]
BCRESNET = ["bcresnet1", "bcresnet1_5", "bcresnet2", "bcresnet3", "bcresnet6", "bcresnet8"]


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of Conv and Linear layers for one example (hand-rolled hooks)."""
    total = [0]

    def hook(m, inp, out):
        per_example = out.numel() // out.shape[0]
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            k = 1
            for v in m.kernel_size:
                k *= v
            total[0] += per_example * (m.in_channels // m.groups) * k
        elif isinstance(m, nn.Linear):
            total[0] += per_example * m.in_features

    hooks = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return total[0]


# ---------------------------------------------------------------- registry
def test_list_and_info():
    names = list_models()
    assert set(DSCNN + BCRESNET) <= set(names) and names == sorted(names)
    assert list_models("bcresnet*") == sorted(BCRESNET)
    info = model_info("dscnn_s")
    assert info["family"] == "dscnn" and info["input"] == "2d"
    assert info["frontend"] == {"type": "mfcc", "n_mfcc": 10, "win_length": 640,
                                "hop_length": 320, "n_fft": 1024}
    assert info["defaults"]["in_features"] == 10 and "arXiv:1711.07128" in info["paper"]
    info["frontend"]["n_mfcc"] = 99  # a copy: the registry is not changed
    assert model_info("dscnn_s")["frontend"]["n_mfcc"] == 10
    b = model_info("bcresnet8")
    assert b["frontend"]["n_mels"] == 40 and b["published"]["params"] == 321e3
    assert b["defaults"] == {"num_classes": 12, "in_features": 40, "dropout": 0.1,
                             "sub_bands": 5, "causal": False}


def test_unknown_model_suggests_close_names():
    with pytest.raises(KwsError) as e:
        create_model("dscnn-s", num_classes=12)
    msg = str(e.value)
    assert "did you mean dscnn_s" in msg and "bcresnet8" in msg and "\n" not in msg
    with pytest.raises(KwsError, match="unknown model 'resnet99'"):
        model_info("resnet99")


def test_bad_arguments_are_named():
    with pytest.raises(KwsError, match="'dropuot'.*did you mean 'dropout'"):
        create_model("dscnn_s", num_classes=12, dropuot=0.1)
    with pytest.raises(KwsError, match="num_classes"):
        create_model("bcresnet1", num_classes=0)
    with pytest.raises(KwsError, match="dropout"):
        create_model("bcresnet1", dropout=1.5)
    with pytest.raises(KwsError, match="in_features=42"):
        create_model("bcresnet1", in_features=42)  # 21 bins do not split into 5 sub-bands
    m = create_model("bcresnet1", in_features=80)  # 40, 20, 10, 10 bins: fine
    assert m(torch.randn(1, 1, 80, 20)).shape == (1, 12)


def test_every_model_builds_with_name_and_contract():
    for name in list_models():
        m = create_model(name, num_classes=7)
        assert m.model_name == name
        assert isinstance(m.streamable, bool) and isinstance(m.stream_note, str)
        assert m.streamable or m.stream_note  # a model that cannot stream says why
        assert isinstance(m.lookahead_frames, int) and m.lookahead_frames >= 0


# ---------------------------------------------------------------- sizes against the papers
@pytest.mark.parametrize("name", BCRESNET)
def test_bcresnet_params_match_paper(name):
    published = model_info(name)["published"]["params"]  # arXiv:2106.04140 Table 3
    got = n_params(create_model(name, num_classes=12))
    assert abs(got - published) / published < 0.05, (name, got, published)


def test_bcresnet1_exact_params_and_time_resolution():
    m = create_model("bcresnet1")
    assert n_params(m) == 9232  # hand count of Table 1 (paper: 9.2k)
    assert m.frame_stride == 1  # strides are in frequency only
    # stem 5x5 'same' (2) + one dilated 1x3 conv per block (its dilation) + head 5x5 (2)
    assert m.lookahead_frames == 2 + (2 * 1 + 2 * 2 + 4 * 4 + 4 * 8) + 2 == 58
    x = torch.randn(1, 1, 40, 101)
    assert m.body(x).shape == (1, 32, 101)


# Hello Edge reports "memory" (KB) = 8-bit weights with BN folded into the conv biases plus
# the largest pair of activation buffers (one layer's input and output) -- not a param count.
HELLO_EDGE = {"dscnn_s": (23_180, 38.6, 5.4e6), "dscnn_m": (136_580, 189.2, 19.8e6),
              "dscnn_l": (413_736, 497.6, 56.9e6)}


@pytest.mark.parametrize("name", DSCNN)
def test_dscnn_matches_hello_edge(name):
    params, memory_kb, ops = HELLO_EDGE[name]
    m = create_model(name, num_classes=12).eval()
    assert n_params(m) == params
    assert model_info(name)["published"]["memory_kb"] == memory_kb
    folded = 0
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            folded += mod.weight.numel() + mod.out_channels  # BN folds into a bias
        elif isinstance(mod, nn.Linear):
            folded += mod.weight.numel() + mod.bias.numel()
    act = [0]

    def hook(mod, inp, out):
        act[0] = max(act[0], inp[0][0].numel() + out[0].numel())

    # hook the layers as the model sees them: a StreamConv2d's input before its own padding
    inner = {id(mod.conv) for mod in m.modules() if isinstance(mod, StreamConv2d)}
    layers = [mod for mod in m.modules() if isinstance(mod, StreamConv2d)
              or (isinstance(mod, nn.Conv2d) and id(mod) not in inner)]
    hooks = [mod.register_forward_hook(hook) for mod in layers]
    x = torch.randn(1, 1, 10, 49)
    with torch.no_grad():
        m(x)
    for h in hooks:
        h.remove()
    assert round((folded + act[0]) / 1000, 1) == memory_kb
    # published ops count multiply and add separately: 2 x MACs, within 5 %
    assert abs(2 * conv_linear_macs(m, x) - ops) / ops < 0.05


def test_dscnn_layout():
    s, m_, l_ = (create_model(n) for n in DSCNN)
    assert (s.frame_stride, m_.frame_stride, l_.frame_stride) == (2, 4, 4)
    assert (s.lookahead_frames, m_.lookahead_frames, l_.lookahead_frames) == (13, 19, 23)
    first = s.body.conv
    assert isinstance(first, StreamConv2d) and first.conv.kernel_size == (4, 10)
    assert s.body(torch.randn(1, 1, 10, 49)).shape == (1, 64, 25)
    assert l_.body(torch.randn(1, 1, 10, 49)).shape == (1, 276, 13)


# ---------------------------------------------------------------- forward / backward
@pytest.mark.parametrize("name", DSCNN + BCRESNET)
def test_forward_shape_and_backward(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=35)
    assert_trains(m, torch.randn(*feature_shape(name, 2, recipe_frames(name))), 35)


def test_wrong_input_shape_is_a_user_error():
    m = create_model("dscnn_s")
    want = r"dscnn_s: expected features shaped \(batch, 1, 10, frames\)"
    with pytest.raises(KwsError, match=want):
        m(torch.randn(2, 1, 40, 49))
    with pytest.raises(KwsError, match="frames"):
        m(torch.randn(2, 10, 49))


# ---------------------------------------------------------------- the streaming proof
@pytest.mark.parametrize("name,causal", [(n, False) for n in DSCNN + BCRESNET]
                         + [("dscnn_m", True), ("bcresnet1", True)])
def test_streaming_equals_whole(name, causal):
    torch.manual_seed(1)
    m = eval_model(name, num_classes=5, causal=causal)
    t = 300 if name in ("dscnn_s", "dscnn_m", "bcresnet1") else 160
    x = torch.randn(*feature_shape(name, 2, t))
    window = m.num_out_frames(recipe_frames(name))  # a 1-s clip's worth of frames
    assert_model_streams(m, x, window, seed=len(name), max_chunk=9, atol=1e-5, causal=causal)


@pytest.mark.parametrize("name", ["dscnn_s", "dscnn_l", "bcresnet1", "bcresnet3"])
def test_clip_logits_equal_last_frame(name):
    torch.manual_seed(2)
    m = eval_model(name)
    x = torch.randn(*feature_shape(name, 3, recipe_frames(name)))
    assert_clip_is_last_frame(m, x, atol=1e-5)
