"""TC-ResNet8/14/14-1.5 and Res15: sizes against the papers, shapes, gradients, streaming."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from kwskit.config import load_config
from kwskit.errors import KwsError
from kwskit.eval.profile import count_macs
from kwskit.layers import FrameSpec, StreamSum
from kwskit.models import create_model, list_models, model_info
from kwskit.models.res15 import dilation_of
from kwskit.models.tcresnet import tc_block
from model_checks import (assert_clip_is_last_frame, assert_model_streams, assert_trains,
                          eval_model, feature_shape, n_params, randomize_batchnorm,
                          recipe_frames, recipe_pipeline, run_stream)

pytestmark = pytest.mark.usefixtures("one_thread")

TCRESNET = ["tcresnet8", "tcresnet14", "tcresnet14_1_5"]
ALL = TCRESNET + ["res15"]
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def features(name: str, batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    """Seeded random recipe features (40 MFCCs) for ``name``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*feature_shape(name, batch, frames), generator=g)


# ---------------------------------------------------------------- registry
def test_registered_with_recipe_frontends():
    assert set(ALL) <= set(list_models())
    for name in TCRESNET:
        info = model_info(name)
        assert info["family"] == "tcresnet" and info["input"] == "1d"
        assert "arXiv:1904.03814" in info["paper"]
        assert info["defaults"] == {"num_classes": 12, "in_features": 40, "dropout": 0.5,
                                    "causal": False}
    info = model_info("res15")
    assert info["family"] == "res15" and info["input"] == "2d"
    assert info["published"]["params"] == 238e3 and info["published"]["macs"] == 894e6
    for name in ALL:  # 40 MFCCs, 30 ms window, 10 ms hop: 98 frames per 1-s clip
        fe = model_info(name)["frontend"]
        assert (fe["type"], fe["n_mfcc"], fe["win_length"], fe["hop_length"]) == (
            "mfcc", 40, 480, 160)
        assert recipe_frames(name) == 98


def test_bad_arguments_are_named():
    with pytest.raises(KwsError, match="tcresnet8: dropout"):
        create_model("tcresnet8", dropout=1.5)
    with pytest.raises(KwsError, match="res15: in_features"):
        create_model("res15", in_features=0)
    with pytest.raises(KwsError, match="'width'"):
        create_model("tcresnet14", width=2.0)  # sizes are registered names, not arguments


def test_wrong_input_shape_is_a_user_error():
    with pytest.raises(KwsError, match=r"tcresnet8: expected features shaped \(batch, 40, "):
        create_model("tcresnet8")(torch.randn(2, 1, 40, 98))  # 2-D features into a 1-D model
    with pytest.raises(KwsError, match=r"res15: expected features shaped \(batch, 1, 40, "):
        create_model("res15")(torch.randn(2, 40, 98))


# ---------------------------------------------------------------- sizes against the papers
# Trainable parameters for 12 classes (hand counts, see below) and the papers' figures.
PARAMS = {"tcresnet8": (65_180, 66e3), "tcresnet14": (135_868, 137e3),
          "tcresnet14_1_5": (303_012, 305e3), "res15": (237_882, 238e3)}


@pytest.mark.parametrize("name", ALL)
def test_params_match_paper(name):
    exact, paper = PARAMS[name]
    assert model_info(name)["published"]["params"] == paper
    got = n_params(create_model(name, num_classes=12))
    assert got == exact
    assert abs(got - paper) / paper < 0.05, (name, got, paper)


def tc_hand_count(widths, k: float, classes: int = 12, frames: int = 98):
    """(params, MACs) of TC-ResNet by hand: convs without bias, BN (2 per channel), FC."""
    ch = [int(16 * k)] + [int(c * k) for c in widths]
    params, macs, t = 40 * ch[0] * 3 + 2 * ch[0], 40 * ch[0] * 3 * frames, frames
    for cin, cout in zip(ch, ch[1:]):
        conv = cin * cout * 9 + cout * cout * 9 + (cin * cout if cin != cout else 0)
        t = math.ceil(t / 2) if cin != cout else t  # 'same' padding, stride 2
        bn = 2 * cout * (3 if cin != cout else 2)
        params += conv + bn
        macs += conv * t
    return params + ch[-1] * classes + classes, macs + ch[-1] * classes


def test_hand_counts_and_macs():
    sizes = {"tcresnet8": ((24, 32, 48), 1.0), "tcresnet14": ((24, 24, 32, 32, 48, 48), 1.0),
             "tcresnet14_1_5": ((24, 24, 32, 32, 48, 48), 1.5)}
    macs = {}
    for name, (widths, k) in sizes.items():
        p, m = tc_hand_count(widths, k)
        assert p == PARAMS[name][0]
        macs[name] = count_macs(create_model(name), features(name, 1, 98))
        assert macs[name] == m, name
    # Table 1 of the paper gives 1.12 / 2.61 / 5.76 M "FLOPs"; our MACs for 98 frames are
    # 1.52 / 3.03 / 6.68 M. The published figures are neither MACs nor 2 x MACs of any one
    # input length (the TC-ResNet8 ratio differs from the other two); see the README.
    assert [round(macs[n] / 1e4) for n in TCRESNET] == [152, 303, 668]
    # Res15: conv0 + 13 dilated 45x45 3x3 convs at all 40 x 98 positions, plus the FC;
    # the paper's 894 M multiplies are within 5 % (it does not state its frame count).
    res = count_macs(create_model("res15"), features("res15", 1, 98))
    assert res == 40 * 98 * 9 * (45 + 13 * 45 * 45) + 45 * 12
    assert abs(res - 894e6) / 894e6 < 0.05


def test_layout_and_timing():
    t8, t14, t14w = (create_model(n) for n in TCRESNET)
    assert t8.frame_stride == t14.frame_stride == 8  # three stride-2 blocks
    # conv0 k=3 looks 1 ahead; a stride-2 block 4 + 4*2 = 12 input frames, a stride-1 block
    # 4 + 4 = 8, each scaled by the stride before it
    assert t8.lookahead_frames == 1 + 12 + 12 * 2 + 12 * 4 == 85
    assert t14.lookahead_frames == t14w.lookahead_frames == (
        1 + 12 + 8 * 2 + 12 * 2 + 8 * 4 + 12 * 4 + 8 * 8) == 197
    assert t8.body(features("tcresnet8", 1, 98)).shape == (1, 48, 13)
    assert t14w.body(features("tcresnet14", 1, 98)).shape == (1, 72, 13)
    r = create_model("res15")
    assert [dilation_of(i) for i in range(1, 14)] == [1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8, 16]
    assert r.frame_stride == 1 and r.lookahead_frames == 1 + 61
    assert r.body(features("res15", 1, 98)).shape == (1, 45, 98)
    assert not any(m.affine for m in r.modules() if isinstance(m, nn.BatchNorm2d))
    for name in ["tcresnet8", "res15"]:
        c = create_model(name, causal=True)
        assert c.lookahead_frames == 0 and n_params(c) == PARAMS[name][0]


# ---------------------------------------------------------------- forward / backward
@pytest.mark.parametrize("name", ALL)
def test_recipe_input_forward_and_backward(name):
    torch.manual_seed(0)
    info = model_info(name)
    pipe = recipe_pipeline(name, num_classes=35).train()
    wave = 0.1 * torch.randn(2, 16000)
    feats = pipe.features(wave)
    assert feats.shape == ((2, 40, 98) if info["input"] == "1d" else (2, 1, 40, 98))
    assert_trains(pipe, wave, 35, params=pipe.backbone)


def test_recipes_build():
    for name in ALL:
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert cfg.model.name == name and cfg.frontend["n_mfcc"] == 40
        assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.1 and cfg.schedule.gamma == 0.1
    assert load_config(CONFIGS / "res15.yaml").train.batch_size == 64
    assert load_config(CONFIGS / "tcresnet8.yaml").train.batch_size == 100


# ---------------------------------------------------------------- the streaming proof
@pytest.mark.parametrize("name,causal,t", [
    ("tcresnet8", False, 203), ("tcresnet14", False, 290), ("tcresnet14_1_5", False, 261),
    ("res15", False, 101), ("tcresnet8", True, 97), ("res15", True, 41)])
def test_streaming_equals_whole(name, causal, t):
    torch.manual_seed(1)
    m = eval_model(name, num_classes=5, causal=causal)
    x = features(name, 2, t, seed=3)
    window = m.num_out_frames(recipe_frames(name))  # a 1-s clip's worth of frames
    assert_model_streams(m, x, window, seed=len(name) + t, max_chunk=9, atol=1e-5, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_strided_block_aligns_shortcut_and_main_path(causal):
    """The 1x1 stride-2 shortcut is ready 12 frames before the two k=9 convs ('same'):
    StreamSum must queue its frames, frame by frame, and match the whole-sequence block."""
    torch.manual_seed(4)
    block = tc_block(8, 12, "causal" if causal else "same")
    randomize_batchnorm(block)
    block.eval()
    ssum = block.sum
    assert isinstance(ssum, StreamSum) and ssum.stride == 2
    assert [b.lookahead for b in ssum.branches] == ([0, 0] if causal else [0, 12])
    x = torch.randn(1, 8, 32)
    with torch.no_grad():
        whole = block(x)
        got, warmup = run_stream(block, x, seed=1, max_chunk=1)  # one output frame per step
    assert whole.shape[-1] == 16
    assert warmup == (0 if causal else 6)  # 12 input frames = 6 output frames
    assert got.shape[-1] == 16 - warmup
    torch.testing.assert_close(got, whole[..., :got.shape[-1]], atol=1e-5, rtol=0)
    # the shortcut waits in the sum's FIFO: 6 output frames of 12 channels, or none at all
    states, _ = ssum.stream_init(1, FrameSpec((8,)))
    assert ssum._delays == ([0, 0] if causal else [6, 0])
    if not causal:  # the shortcut branch's last state is its FIFO
        assert states[ssum._counts[0] - 1].shape == (1, 12, 6)


@pytest.mark.parametrize("name", ["tcresnet8", "res15"])
def test_clip_logits_equal_last_frame(name):
    torch.manual_seed(2)
    m = eval_model(name)
    assert_clip_is_last_frame(m, features(name, 3, 98), atol=1e-5)


# ---------------------------------------------------------------- it learns
def test_tcresnet8_learns_tiny_data(tiny_data, tmp_path):
    from kwskit.train.loop import fit

    cfg = load_config(CONFIGS / "tcresnet8.yaml", [
        "data.labels=[yes, no, up, down]", "train.batch_size=16", "train.epochs=8",
        "optim.name=adam", "optim.lr=0.003", "optim.weight_decay=0", "schedule.name=constant",
        "train.threads=1", "augment.noise_prob=0.3", "model.args.dropout=0.1"])
    result = fit(cfg, tmp_path / "run", data=str(tiny_data), quiet=True, track=False)
    assert result["labels"] == ["yes", "no", "up", "down", "_silence_", "_unknown_"]
    assert result["best"]["val_acc"] > 0.6  # six classes: chance is 1/6
