"""MatchboxNet-3x1x64 and KWT-1: sizes against the papers, shapes on the recipe input, the
streaming proof (MatchboxNet) and the refusal to stream (KWT), recipes, a short training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kwskit.config import load_config
from kwskit.errors import KwsError
from kwskit.eval.profile import count_macs
from kwskit.models import create_model, list_models, model_info
from kwskit.models.io import build_pipeline
from kwskit.models.kwt import EncoderLayer
from kwskit.train.loop import fit
from model_checks import (assert_clip_is_last_frame, assert_model_streams, assert_trains,
                          eval_model, n_params, recipe_pipeline)

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = ["matchboxnet_3x1x64", "kwt1"]


# ---------------------------------------------------------------- registry and sizes
def test_registered_with_recipe_frontends():
    assert set(MODELS) <= set(list_models())
    mb, kwt = model_info("matchboxnet_3x1x64"), model_info("kwt1")
    assert mb["family"] == "matchboxnet" and mb["input"] == "1d"
    assert mb["frontend"]["n_mfcc"] == 64 and mb["frontend"]["win_length"] == 400
    assert kwt["family"] == "kwt" and kwt["input"] == "1d"
    assert kwt["frontend"]["n_mfcc"] == 40 and kwt["frontend"]["win_length"] == 480
    assert "arXiv:2004.08531" in mb["paper"] and "arXiv:2104.00769" in kwt["paper"]
    assert kwt["defaults"] == {"num_classes": 12, "in_features": 40, "dropout": 0.0,
                               "num_frames": 98, "prenorm": False}


def matchbox_hand_count(classes: int, f: int = 64) -> int:
    """Table 1 counted by hand: separable convs without bias, BN (2 per channel)."""
    prologue = f * 11 + f * 128 + 2 * 128
    blocks, c_in = 0, 128
    for k in (13, 15, 17):
        blocks += c_in * k + c_in * 64 + 2 * 64  # depthwise + pointwise + BN
        blocks += c_in * 64 + 2 * 64  # 1x1 shortcut + BN
        c_in = 64
    epilogue = 64 * 29 + 64 * 128 + 2 * 128
    conv3 = 128 * 128 + 2 * 128
    return prologue + blocks + epilogue + conv3 + 128 * classes + classes


def test_matchboxnet_params_match_paper():
    published = model_info("matchboxnet_3x1x64")["published"]["params"]  # 77 K
    for classes in (12, 30, 35):
        got = n_params(create_model("matchboxnet_3x1x64", num_classes=classes))
        assert got == matchbox_hand_count(classes)
        assert abs(got - published) / published < 0.05, (classes, got)
    # 30 classes (GSC v1, all words) gives the paper's figure almost exactly
    assert n_params(create_model("matchboxnet_3x1x64", num_classes=30)) == 77_214


def test_kwt1_params_match_authors_release():
    m = create_model("kwt1", num_classes=12)
    # the authors' Keras summary of their released KWT-1: 606,528 encoder + 780 head
    assert n_params(m) == 607_308
    assert n_params(m.body) == 606_528
    published = model_info("kwt1")["published"]["params"]  # 607 K
    assert abs(n_params(create_model("kwt1", num_classes=35)) - published) / published < 0.05


def test_macs_match_hand_count():
    t = 98
    mb = create_model("matchboxnet_3x1x64", num_classes=12)
    per_frame = (64 * 11 + 64 * 128 + 128 * 13 + 2 * 128 * 64 + 64 * 15 + 64 * 17
                 + 4 * 64 * 64 + 64 * 29 + 64 * 128 + 128 * 128)
    assert count_macs(mb, torch.randn(1, 64, t)) == per_frame * t + 128 * 12
    kwt = create_model("kwt1", num_classes=12)
    n, d = t + 1, 64
    layer = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * 256
    assert count_macs(kwt, torch.randn(1, 40, t)) == 12 * layer + t * 40 * d + d * 12


# ---------------------------------------------------------------- forward / backward
@pytest.mark.parametrize("name", MODELS)
def test_recipe_input_forward_and_backward(name):
    torch.manual_seed(0)
    pipe = recipe_pipeline(name, num_classes=35).train()
    wave = 0.1 * torch.randn(2, 16000)
    feats = pipe.features(wave)
    assert feats.shape == (2, pipe.backbone.in_features, 98)  # 1 s -> 98 frames, 1-D input
    assert_trains(pipe, wave, 35, params=pipe.backbone)


def test_wrong_shapes_are_user_errors():
    mb, kwt = create_model("matchboxnet_3x1x64"), create_model("kwt1")
    with pytest.raises(KwsError, match=r"matchboxnet_3x1x64: expected features shaped "
                                       r"\(batch, 64, frames\)"):
        mb(torch.randn(2, 1, 64, 98))
    with pytest.raises(KwsError, match=r"kwt1: takes exactly 98 frames.*num_frames=97"):
        kwt(torch.randn(2, 40, 97))
    assert create_model("kwt1", num_frames=50)(torch.randn(1, 40, 50)).shape == (1, 12)
    with pytest.raises(KwsError, match="num_frames"):
        create_model("kwt1", num_frames=0)
    with pytest.raises(KwsError, match="dropout"):
        create_model("matchboxnet_3x1x64", dropout=1.0)


# ---------------------------------------------------------------- MatchboxNet streaming
@pytest.mark.parametrize("causal", [False, True])
def test_matchboxnet_streaming_equals_whole(causal):
    torch.manual_seed(1)
    m = eval_model("matchboxnet_3x1x64", num_classes=5, causal=causal)
    assert m.streamable and m.frame_stride == 1
    assert m.lookahead_frames == (0 if causal else 5 + 6 + 7 + 8 + 28)
    t = 170
    x = torch.randn(2, 64, t)
    whole, streamed = assert_model_streams(m, x, 98, seed=3 + causal, max_chunk=9, atol=1e-4,
                                           causal=causal)
    assert whole.shape == (2, 5, t)
    assert streamed.shape[-1] == t - m.lookahead_frames  # every frame needing no input past t


def test_matchboxnet_clip_logits_equal_last_frame():
    torch.manual_seed(2)
    m = eval_model("matchboxnet_3x1x64")
    x = torch.randn(3, 64, 98)
    assert_clip_is_last_frame(m, x, atol=1e-5)  # window = 98 frames, and window=None
    with torch.no_grad():
        assert m.body(x).shape == (3, 128, 98)


# ---------------------------------------------------------------- KWT: not streamable
def test_kwt_refuses_to_stream_with_its_note():
    m = create_model("kwt1")
    assert m.streamable is False and "global self-attention" in m.stream_note
    assert m.lookahead_frames == 97 and m.frame_stride == 98  # needs the whole 1-s window
    x = torch.randn(1, 40, 98)
    for call in (lambda: m.stream_init(1, 98), lambda: m.step(x, ()),
                 lambda: m.forward_frames(x), lambda: m.body.step(x, ())):
        with pytest.raises(KwsError, match="cannot (stream|score frame by frame)"):
            call()
    assert m.no_weight_decay() <= {k for k, _ in m.named_parameters()}


def test_kwt_attends_to_the_whole_window():
    torch.manual_seed(3)
    m = create_model("kwt1").eval()
    x = torch.randn(2, 40, 98)
    with torch.no_grad():
        y = m(x)
        for t in (0, 97):  # the first and the last frame both change the clip logits
            x2 = x.clone()
            x2[..., t] += 1.0
            assert (m(x2) - y).abs().max() > 1e-4


@pytest.mark.parametrize("prenorm", [False, True])
def test_kwt_layer_equals_torch_encoder_layer(prenorm):
    """Our layer (q/k/v without bias) is PyTorch's encoder layer with zero in_proj bias."""
    torch.manual_seed(4)
    ours = EncoderLayer(32, 2, 64, 0.0, prenorm).eval()
    ref = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, activation="gelu",
                                     layer_norm_eps=1e-6, batch_first=True,
                                     norm_first=prenorm).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.attn.qkv.weight)
        ref.self_attn.in_proj_bias.zero_()
        ref.self_attn.out_proj.load_state_dict(ours.attn.proj.state_dict())
        ref.linear1.load_state_dict(ours.mlp[0].state_dict())
        ref.linear2.load_state_dict(ours.mlp[2].state_dict())
        for a, b in ((ref.norm1, ours.norm1), (ref.norm2, ours.norm2)):
            a.weight.copy_(torch.rand(32) + 0.5)
            a.bias.copy_(torch.randn(32) * 0.1)
            b.load_state_dict(a.state_dict())
        x = torch.randn(3, 11, 32)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- recipes and training
@pytest.mark.parametrize("name", MODELS)
def test_recipe_loads_and_matches_registry(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.name == name
    assert cfg.frontend == model_info(name)["frontend"]  # `kwskit info` profiles the recipe
    pipe = build_pipeline(cfg, num_classes=12).eval()
    with torch.no_grad():
        assert pipe(0.1 * torch.randn(2, 16000)).shape == (2, 12)


def test_matchboxnet_learns_tiny_data(tiny_data, tmp_path):
    fe = json.dumps(model_info("matchboxnet_3x1x64")["frontend"])
    cfg = load_config(None, [
        "model.name=matchboxnet_3x1x64", f"frontend={fe}", "data.labels=[yes, no, up, down]",
        "train.batch_size=16", "optim.name=adam", "optim.lr=0.003", "optim.weight_decay=0",
        "schedule.name=constant", "train.threads=1", "augment.noise_prob=0.3",
        "train.epochs=8"])
    result = fit(cfg, tmp_path / "run", data=str(tiny_data), quiet=True, track=False)
    # six classes (4 words + silence + unknown): chance is 1/6
    assert result["best"]["val_acc"] > 0.6
