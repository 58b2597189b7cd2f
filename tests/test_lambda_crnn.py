"""Temporal Lambda-ResNet18 and CRNN: the lambda layer, StreamGRU and attention pooling against
naive references, sizes against the papers, and the streaming proof (chunked == whole)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import FrameSpec
from kwskit.layers.lambda_layer import LambdaLayer1d
from kwskit.layers.recurrent import AttentionPool, StreamGRU
from kwskit.models import create_model, model_info
from model_checks import (assert_clip_is_last_frame, assert_model_streams, assert_trains,
                          feature_shape, n_params, randomize_batchnorm, recipe_pipeline,
                          run_stream)

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["lambda_resnet18", "crnn"]


# Kept here, not in model_checks: only the lambda family needs it (see the docstring).
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Random affine BN parameters, running statistics measured on ``x`` (one train-mode pass,
    cumulative average). The lambda layer multiplies queries by value summaries, so its output
    grows like its input squared: BN statistics unrelated to the activations (as in
    ``randomize_batchnorm``), or measured on too few other frames, blow 8 stacked layers up
    to 1e7..inf. Statistics of the test input itself keep eval mode non-trivial and finite."""
    randomize_batchnorm(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


# ---------------------------------------------------------------- lambda layer
def naive_lambda(layer: LambdaLayer1d, x: torch.Tensor) -> torch.Tensor:
    """Bello's equations frame by frame, with explicit windows (no unfold, no conv)."""
    q, k, v = layer._project(x)  # (B,h,k,T), (B,k,u,T), (B,v,u,T)
    b, t = x.shape[0], x.shape[-1]
    out = torch.zeros(b, layer.heads, layer.v, t, dtype=x.dtype)
    for n in range(t):
        lo = 0 if layer.context is None else max(0, n - layer.context + 1)
        hi = t if layer.context is None else n + 1
        kbar = k[..., lo:hi].softmax(dim=-1)  # normalised over the context frames
        lam = torch.einsum("bkum,bvum->bkv", kbar, v[..., lo:hi])
        if layer.embedding is not None:
            for j in range(layer.m):  # position window: frames n - pad_left + j
                s = n - layer.pad_left + j
                if 0 <= s < t:
                    lam = lam + torch.einsum("ku,bvu->bkv", layer.embedding[:, :, 0, j],
                                             v[..., s])
        out[..., n] = torch.einsum("bhk,bkv->bhv", q[..., n], lam)
    return out.reshape(b, -1, t)


@pytest.mark.parametrize("context,m,padding", [(None, 23, "same"), (None, 4, "causal"),
                                               (6, 5, "same"), (3, 7, "causal"), (9, 0, "same")])
def test_lambda_layer_matches_naive_equations(context, m, padding):
    torch.manual_seed(0)
    layer = LambdaLayer1d(6, 8, heads=2, key_dim=3, intra_depth=2, pos_kernel=m,
                          context=context, padding=padding).double()
    randomize_batchnorm(layer)
    layer.eval()
    x = torch.randn(2, 6, 17, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), naive_lambda(layer, x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("context,m,padding", [(5, 23, "same"), (1, 3, "same"),
                                               (12, 4, "same"), (5, 23, "causal"),
                                               (30, 0, "causal")])
def test_lambda_layer_streams_exactly(context, m, padding):
    torch.manual_seed(1)
    layer = LambdaLayer1d(8, 12, heads=4, key_dim=4, pos_kernel=m, context=context,
                          padding=padding).double()
    randomize_batchnorm(layer)
    layer.eval()
    x = torch.randn(2, 8, 61, dtype=torch.float64)
    with torch.no_grad():
        whole = layer(x)
        streamed, warmup = run_stream(layer, x, seed=m + context)
    assert warmup == layer.lookahead and streamed.shape[-1] == 61 - warmup
    assert layer.lookahead == (0 if padding == "causal" else (m - 1) - (m - 1) // 2)
    torch.testing.assert_close(streamed, whole[..., :streamed.shape[-1]], atol=1e-12, rtol=0)


def test_lambda_layer_context_is_what_it_says():
    """A causal layer's frame n reads frames [n - max(W, m) + 1, n] and nothing else."""
    torch.manual_seed(2)
    layer = LambdaLayer1d(4, 4, heads=2, key_dim=2, pos_kernel=3, context=5,
                          padding="causal").double().eval()
    x = torch.randn(1, 4, 30, dtype=torch.float64)
    y = layer(x)
    n = 20
    for frame, changes in ((n + 1, False), (n - 5, False), (n - 4, True), (n, True)):
        x2 = x.clone()
        x2[..., frame] += 3.0
        assert torch.equal(layer(x2)[..., n], y[..., n]) != changes, frame
    # global context: the first frame depends on the last one
    glob = LambdaLayer1d(4, 4, heads=2, key_dim=2, pos_kernel=3).double().eval()
    x2 = x.clone()
    x2[..., -1] += 3.0
    assert not torch.equal(glob(x2)[..., 0], glob(x)[..., 0])
    with pytest.raises(KwsError, match="cannot stream"):
        glob.stream_init(1, FrameSpec((4,)))


def test_lambda_layer_bad_arguments():
    with pytest.raises(KwsError, match="heads=5 must divide d_out=12"):
        LambdaLayer1d(4, 12, heads=5)
    with pytest.raises(KwsError, match="context"):
        LambdaLayer1d(4, 12, context=0)


# ---------------------------------------------------------------- GRU and attention pooling
def test_stream_gru_chunked_equals_whole_and_nn_gru():
    torch.manual_seed(3)
    gru = StreamGRU(5, 7, num_layers=2, dropout=0.1).double().eval()
    x = torch.randn(3, 5, 40, dtype=torch.float64)
    with torch.no_grad():
        whole = gru(x)
        ref, _ = gru.gru(x.transpose(1, 2))
        torch.testing.assert_close(whole, ref.transpose(1, 2), atol=0, rtol=0)
        streamed, warmup = run_stream(gru, x, seed=4)
        assert warmup == 0
        torch.testing.assert_close(streamed, whole, atol=1e-12, rtol=0)
        (s0,), _ = gru.stream_init(3, FrameSpec((5,)), dtype=torch.float64)
        assert s0.shape == (2, 3, 7) and not s0.any()
        # the state matters: continuing from it differs from restarting
        y1, st = gru.step(x[..., :20], (s0,))
        y2, _ = gru.step(x[..., 20:], st)
        assert not torch.allclose(y2, gru(x[..., 20:]))
        # warm-up frames (look-ahead before the GRU) leave the hidden state untouched
        states, spec = gru.stream_init(3, FrameSpec((5,), warmup=3), dtype=torch.float64)
        junk = torch.full((3, 5, 3), 1e3, dtype=torch.float64)
        y, _ = gru.step(torch.cat([junk, x], dim=-1), states)
        assert spec.warmup == 3
        torch.testing.assert_close(y[..., 3:], whole, atol=1e-12, rtol=0)


def naive_attention_frames(pool: AttentionPool, x: torch.Tensor, window) -> torch.Tensor:
    e = pool.energy(x)
    out = torch.zeros_like(x)
    for t in range(x.shape[-1]):
        lo = 0 if window is None else max(0, t - window + 1)
        a = e[:, lo:t + 1].softmax(dim=-1)
        out[..., t] = torch.einsum("bt,bct->bc", a, x[..., lo:t + 1])
    return out


@pytest.mark.parametrize("window", [1, 4, 13, 100, None])
def test_attention_pool_windows_and_streaming(window):
    torch.manual_seed(6)
    pool = AttentionPool(6, hidden=5).double()
    pool.block = 8  # several blocks for window=None
    x = torch.randn(2, 6, 45, dtype=torch.float64)
    with torch.no_grad():
        frames = pool.frames(x, window)
        torch.testing.assert_close(frames, naive_attention_frames(pool, x, window),
                                   atol=1e-12, rtol=0)
        if window is not None:  # streams pool a fixed window
            streamed, _ = run_stream(pool, x, seed=7, max_chunk=11, window=window)
            torch.testing.assert_close(streamed, frames, atol=1e-12, rtol=0)
        whole = pool(x)
        torch.testing.assert_close(pool.frames(x, 45)[..., -1], whole, atol=1e-12, rtol=0)
        if window is None:
            torch.testing.assert_close(frames[..., -1], whole, atol=1e-12, rtol=0)


def test_attention_pool_is_stable_with_huge_energies():
    pool = AttentionPool(3, hidden=2)
    with torch.no_grad():
        pool.score.weight.fill_(400.0)  # energies up to +-800: exp would overflow float32
    x = torch.randn(1, 3, 70)
    with torch.no_grad():
        for window in (5, None):
            y = pool.frames(x, window)
            assert torch.isfinite(y).all()
            if window is not None:
                s, _ = run_stream(pool, x, seed=8, window=window)
                torch.testing.assert_close(s, y, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- sizes against the papers
def test_crnn_params_match_homework():
    assert model_info("crnn")["published"]["params"] == 70_443
    assert n_params(create_model("crnn", num_classes=2)) == 70_443  # seed 004: 2 classes
    m = create_model("crnn")
    assert n_params(m) == 71_093
    assert m.body.gru.gru.input_size == 8 * 18  # (40 - 5) // 2 + 1 = 18 bins x 8 channels
    # hidden / channels shrink it for the compression issue (~10x smaller)
    small = create_model("crnn", num_classes=2, channels=4, hidden=16)
    assert n_params(small) < 70_443 / 10


def test_lambda_resnet18_params_match_paper():
    published = model_info("lambda_resnet18")["published"]["params"]  # ~83 K
    for classes, logged in ((11, 83_015), (35, 84_479)):  # the authors' training logs
        m = create_model("lambda_resnet18", num_classes=classes)
        emb = sum(p.numel() for n, p in m.named_parameters() if n.endswith("embedding"))
        assert emb == 8 * 16 * 23
        assert n_params(m) - emb == logged  # torchsummary misses the embeddings
    total = n_params(create_model("lambda_resnet18"))
    assert total == 86_020 and abs(total - published) / published < 0.05


def test_lambda_resnet18_layout():
    m = create_model("lambda_resnet18")
    x = torch.randn(1, 40, 99)
    assert m.frame_stride == 16 and m.body(x).shape == (1, 60, 7)  # 99 -> 50 -> 25 -> 13 -> 7
    widths = [m.body[f"stage{s}_1"].sum.branches[1].lam.d_out for s in range(1, 5)]
    assert widths == [24, 36, 48, 60]
    assert create_model("lambda_resnet18", context=100, causal=True).lookahead_frames == 0
    with pytest.raises(KwsError, match="width=1.1"):
        create_model("lambda_resnet18", width=1.1)  # 26 channels: not divisible by 4 heads


# ---------------------------------------------------------------- forward / backward
@pytest.mark.parametrize("name", NAMES)
def test_recipe_clip_forward_and_backward(name):
    torch.manual_seed(8)
    pipe = recipe_pipeline(name, num_classes=35)
    wave = 0.1 * torch.randn(2, 16000)
    feats = pipe.features(wave)
    assert feats.shape == ((2, 40, 99) if name == "lambda_resnet18" else (2, 1, 40, 98))
    assert_trains(pipe, wave, 35, params=pipe.backbone)


# ---------------------------------------------------------------- the streaming proof
@pytest.mark.parametrize("name,kw,t", [
    ("crnn", {}, 300), ("crnn", {"causal": False, "hidden": 16}, 300),
    ("lambda_resnet18", {"context": 100, "causal": True}, 300),
    ("lambda_resnet18", {"context": 60}, 900),  # 'same': 738 frames of look-ahead
])
def test_streaming_equals_whole(name, kw, t):
    torch.manual_seed(9)
    # float64: the lambda layers multiply activations, so float32 rounding grows with depth
    m = create_model(name, num_classes=5, **kw).double()
    x = torch.randn(*feature_shape(name, 2, t), dtype=torch.float64)
    calibrate_batchnorm(m, x)
    window = m.num_out_frames(99)  # a 1-s clip's worth of body frames
    assert_model_streams(m, x, window, seed=t, max_chunk=23, atol=1e-9,
                         causal=kw.get("causal", name == "crnn"))


@pytest.mark.parametrize("name,kw", [("crnn", {}), ("lambda_resnet18", {"context": 100})])
def test_clip_logits_equal_last_frame(name, kw):
    torch.manual_seed(10)
    m = create_model(name, **kw).double()
    shape = (3, 1, 40, 98) if name == "crnn" else (3, 40, 99)
    x = torch.randn(*shape, dtype=torch.float64)
    calibrate_batchnorm(m, x)
    assert_clip_is_last_frame(m, x, atol=1e-9)


def test_lambda_resnet18_paper_version_does_not_stream():
    m = create_model("lambda_resnet18")
    assert m.streamable is False and "context" in m.stream_note
    with pytest.raises(KwsError, match="cannot stream"):
        m.stream_init(1, 98)
    assert create_model("lambda_resnet18", context=100).streamable


# ---------------------------------------------------------------- it learns
def test_crnn_learns_tiny_data(tiny_data, tmp_path):
    from kwskit.config import load_config
    from kwskit.train.loop import fit

    cfg = load_config(None, ["model.name=crnn", "data.labels=[yes, no, up, down]",
                             "train.batch_size=16", "optim.name=adam", "optim.lr=0.003",
                             "optim.weight_decay=0", "schedule.name=constant",
                             "train.threads=1", "augment.noise_prob=0.3", "train.epochs=6"])
    result = fit(cfg, tmp_path / "run", data=str(tiny_data), quiet=True, track=False)
    assert max(h["val_acc"] for h in result["history"]) > 0.6  # chance: 1/6


def test_crnn_bad_arguments_are_named():
    with pytest.raises(KwsError, match="in_features=4"):
        create_model("crnn", in_features=4)  # smaller than the 5-bin frequency kernel
    with pytest.raises(KwsError, match="kernel"):
        create_model("crnn", kernel=(5,))
    with pytest.raises(KwsError, match="hidden"):
        create_model("crnn", hidden=0)
    m = create_model("crnn", kernel=[3, 10], stride=[1, 4], in_features=20)  # YAML gives lists
    assert m.frame_stride == 4 and m(torch.randn(1, 1, 20, 40)).shape == (1, 12)
