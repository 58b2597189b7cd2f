"""SincConv + (G)DSConv (arXiv:1911.02086): sizes against the paper and the seed's layer table,
the sinc filterbank, shapes through the recipe pipeline, gradients, and the streaming proof."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kwskit.config import load_config
from kwskit.errors import KwsError
from kwskit.eval.profile import count_macs
from kwskit.layers.sinc import LogCompression, SincConv1d
from kwskit.models import create_model, list_models, model_info
from kwskit.models.io import build_pipeline
from kwskit.models.sincconv import ChannelShuffle
from model_checks import (assert_clip_is_last_frame, assert_model_streams, assert_trains,
                          eval_model, n_params, run_stream)

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["sincconv_dsconv", "sincconv_gdsconv"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# The seed reproduction's parameter table for 12 classes, in order: sinc (low, band), BN;
# 5 x (depthwise w, b, pointwise w, b, BN w, b); classifier w, b. Total 120,732.
SEED_TABLE = [40, 40, 40, 40,
              1000, 40, 6400, 160, 160, 160,
              *[1440, 160, 25600, 160, 160, 160] * 4,
              1920, 12]


# ---------------------------------------------------------------- registry and sizes
def test_registered_with_raw_audio_recipe():
    assert set(NAMES) <= set(list_models("sincconv*"))
    for name in NAMES:
        info = model_info(name)
        assert info["family"] == "sincconv" and info["input"] == "wave"
        assert info["frontend"] == {"type": "none"} and "arXiv:1911.02086" in info["paper"]
        m = create_model(name, num_classes=7)
        assert m.model_name == name and m.streamable and m.input_kind == "wave"


def test_dsconv_matches_seed_param_table_exactly():
    m = create_model("sincconv_dsconv", num_classes=12)
    counts = [p.numel() for p in m.parameters() if p.requires_grad]
    assert counts == SEED_TABLE
    assert n_params(m) == sum(SEED_TABLE) == 120_732
    published = model_info("sincconv_dsconv")["published"]["params"]  # paper: ~122k
    assert abs(n_params(m) - published) / published < 0.05


def test_gdsconv_params_match_paper():
    m = create_model("sincconv_gdsconv", num_classes=12)
    assert n_params(m) == 62_286
    published = model_info("sincconv_gdsconv")["published"]["params"]  # paper: 62k
    assert abs(n_params(m) - published) / published < 0.05
    assert [b.pw.groups for b in list(m.body)[4:]] == [1, 2, 3, 2, 3]
    assert isinstance(m.body.block2.shuffle, ChannelShuffle)
    plain = create_model("sincconv_gdsconv", shuffle=False)  # the shuffle has no weights
    assert n_params(plain) == 62_286 and not hasattr(plain.body.block2, "shuffle")


def test_dsconv_timing_and_macs():
    m = create_model("sincconv_dsconv")
    assert m.frame_stride == 8 * 2 * 2 * 2 ** 5 == 1024
    # sinc 50 + pool 1*8 + dw25 12*16 + pool 1*32 + 4 x (dw9 4*s + pool 1*s), s = 64..512
    assert m.lookahead_frames == 50 + 8 + 192 + 32 + sum(5 * s for s in (64, 128, 256, 512))
    assert create_model("sincconv_dsconv", causal=True).lookahead_frames == 0
    frames = (2000, 500, 250, 125, 63, 32)  # after the sinc layer, then each depthwise conv
    macs = frames[0] * 40 * 101 + frames[1] * 40 * (25 + 160)
    macs += sum(t * 160 * (9 + 160) for t in frames[2:]) + 160 * 12
    assert count_macs(m, torch.zeros(1, 16000)) == macs == 24_490_720


# ---------------------------------------------------------------- the sinc layer
def test_sinc_filters_are_mel_spaced_band_passes():
    sinc = SincConv1d(40, 101, 8)
    low, high = sinc.band_edges_hz()
    assert low[0] == pytest.approx(50.0) and high[-1] == pytest.approx(7900.0, abs=0.1)
    assert (low[1:] > low[:-1]).all() and (high > low + 50).all()
    assert (torch.diff(low)[1:] > torch.diff(low)[:-1]).all()  # mel: wider steps up high
    w = sinc.filters()
    assert w.shape == (40, 1, 101)
    torch.testing.assert_close(w[:, 0, 50], torch.ones(40))  # centre tap normalised
    torch.testing.assert_close(w, w.flip(-1))  # symmetric: linear phase
    resp = torch.fft.rfft(w[:, 0].double(), n=8192).abs()
    peak_hz = torch.fft.rfftfreq(8192, 1 / 16000)[resp.argmax(dim=1)]
    inside = (peak_hz >= low - 40) & (peak_hz <= high + 40)
    assert inside[1:].all(), (peak_hz, low, high)  # filter 0 (50-145 Hz) smears into DC
    freqs = torch.fft.rfftfreq(8192, 1 / 16000)
    far = (freqs[None] < low[:, None] - 1000) | (freqs[None] > high[:, None] + 1000)
    # stop band: more than 1 kHz off the band, below a tenth of the peak everywhere
    assert ((resp * far).amax(dim=1) < 0.1 * resp.amax(dim=1)).all()


def test_sinc_filters_follow_the_sincnet_formula():
    sinc = SincConv1d(12, 31, 4).double()
    with torch.no_grad():
        sinc.low.uniform_(0.0, 0.3)
        sinc.band.uniform_(0.0, 0.2)
    f1, f2 = (f[:, None] for f in sinc.band_edges())
    n = torch.arange(31, dtype=torch.float64) - 15
    ref = 2 * f2 * torch.sinc(2 * f2 * n) - 2 * f1 * torch.sinc(2 * f1 * n)
    ref = ref / (2 * (f2 - f1)) * torch.hamming_window(31, periodic=False, dtype=torch.float64)
    # float32 window buffer: ~1e-7 rounding
    torch.testing.assert_close(sinc.filters()[:, 0], ref, atol=1e-6, rtol=0)


def test_sinc_band_edges_learn_and_stay_valid():
    torch.manual_seed(0)
    sinc = SincConv1d(8, 51, 4)
    x = torch.randn(2, 1, 400)
    LogCompression()(sinc(x)).sum().backward()
    assert sinc.low.grad.abs().sum() > 0 and sinc.band.grad.abs().sum() > 0
    with torch.no_grad():  # pushed out of range, the edges are clamped to a valid band
        sinc.low.fill_(-0.9)
        sinc.band.fill_(3.0)
    f1, f2 = sinc.band_edges()
    assert (f1 < f2).all() and (f2 <= 0.5).all() and torch.isfinite(sinc.filters()).all()


def test_sinc_rejects_bad_settings():
    with pytest.raises(ValueError, match="odd"):
        SincConv1d(4, 100)
    with pytest.raises(ValueError, match="min_band_hz"):
        SincConv1d(4, 101, min_band_hz=0.0)


@pytest.mark.parametrize("padding", ["same", "causal"])
def test_sinc_layer_streams_exactly(padding):
    torch.manual_seed(3)
    sinc = SincConv1d(6, 21, 8, padding=padding).double()
    x = torch.randn(2, 1, 397, dtype=torch.float64)
    with torch.no_grad():
        whole = sinc(x)
        streamed, warmup = run_stream(sinc, x, seed=3, max_chunk=13)
    assert whole.shape[-1] == -(-397 // 8)
    # frame j waits for sample j*8 + lookahead; steps end on whole strides
    assert warmup == max(0, -(-(sinc.lookahead + 1) // 8) - 1)
    assert streamed.shape[-1] == 397 // 8 - warmup
    torch.testing.assert_close(streamed, whole[..., :streamed.shape[-1]], atol=1e-12, rtol=0)


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).reshape(1, 6, 1).expand(2, 6, 3)
    y = ChannelShuffle(3)(x)
    assert y[0, :, 0].tolist() == [0, 2, 4, 1, 3, 5] and y.shape == x.shape


# ---------------------------------------------------------------- shapes and gradients
@pytest.mark.parametrize("name", NAMES)
def test_recipe_pipeline_forward_and_backward(name):
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.name == name and cfg.frontend == {"type": "none"}
    pipe = build_pipeline(cfg, num_classes=12).train()
    wave = 0.1 * torch.randn(2, 16000)  # a 1-s clip at 16 kHz
    assert_trains(pipe, wave, 12)  # every parameter of the pipeline gets a gradient
    assert pipe.backbone.body.sinc.low.grad.abs().sum() > 0  # the filterbank trains
    assert pipe.backbone.body(wave[:, None]).shape[-1] == 16


def test_user_errors_are_named():
    with pytest.raises(KwsError, match="in_features must be 1"):
        create_model("sincconv_dsconv", in_features=40)
    with pytest.raises(KwsError, match="dropout"):
        create_model("sincconv_gdsconv", dropout=2.0)
    m = create_model("sincconv_dsconv")
    with pytest.raises(KwsError, match=r"sincconv_dsconv: expected features shaped \(batch, "
                                       r"samples\)"):
        m(torch.randn(2, 40, 100))


# ---------------------------------------------------------------- the streaming proof
@pytest.mark.parametrize("name,causal", [(n, False) for n in NAMES] + [("sincconv_gdsconv", True)])
def test_streaming_equals_whole(name, causal):
    torch.manual_seed(1)
    m = eval_model(name, num_classes=5, causal=causal)
    t = 13001
    x = 0.2 * torch.randn(2, t)
    window = m.num_out_frames(16000)  # a 1-s clip's worth of frames
    # chunks of 0 and 1 samples first, then up to 3000
    _, streamed = assert_model_streams(m, x, window, seed=len(name), max_chunk=3000,
                                       atol=1e-5, causal=causal)
    assert streamed.shape[-1] >= 8


def test_clip_logits_equal_last_frame():
    torch.manual_seed(2)
    m = eval_model("sincconv_gdsconv")
    assert_clip_is_last_frame(m, 0.2 * torch.randn(3, 16000), atol=1e-5)


# ---------------------------------------------------------------- it learns
def test_gdsconv_learns_tiny_data(tiny_data, tmp_path):
    from kwskit.train.loop import fit

    cfg = load_config(None, [
        "model.name=sincconv_gdsconv", "frontend={type: none}", "data.labels=[yes, no, up, down]",
        "train.batch_size=16", "optim.name=adam", "optim.lr=0.003", "optim.weight_decay=0",
        "schedule.name=constant", "train.threads=1", "augment.noise_prob=0.3",
        "train.epochs=8"])
    fit(cfg, tmp_path / "run", data=str(tiny_data), quiet=True, track=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best"]["val_acc"] > 0.6  # six classes: chance is 1/6
