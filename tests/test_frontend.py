"""LogMel / MFCC front-ends: agreement with librosa, framing contract, export, config errors."""

import io
import warnings

import numpy as np
import pytest
import torch

from kwskit.errors import KwsError
from kwskit.features.frontend import (MFCC, LogMel, RawWaveform, build_frontend, dct_matrix,
                                      mel_filterbank)

librosa = pytest.importorskip("librosa")
SR = 16000

# Tolerances. float32 module vs float64 librosa: max |diff| of log-mel < 1e-3 (natural log,
# i.e. 0.1 % relative on the mel power) for clips at typical levels with log_offset=1e-6;
# a float64 module must agree to < 1e-4 (its buffers were rounded to float32 once, then
# upcast, which bounds its precision; measured worst case 2.8e-5 in near-silent bands).
TOL32 = 1e-3
TOL64 = 1e-4


def _signal(n=SR, seed=0):
    """Noise + two tones at typical speech levels, with a quiet stretch (tests the offset)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.05 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 440 * t)
    x += 0.1 * np.sin(2 * np.pi * 3000 * t)
    x[n // 3 : n // 2] *= 1e-3
    return x.astype(np.float32)


def _librosa_logmel(x, m: LogMel, power=2.0):
    """librosa's log-mel framed like ``m``: for center=False librosa frames n_fft samples, so
    shift the signal by the window's offset inside n_fft (see frontend module doc)."""
    y = x.astype(np.float64)
    if not m.center:
        y = np.concatenate([np.zeros((m.n_fft - m.win_length) // 2), y])
    S = librosa.feature.melspectrogram(
        y=y, sr=m.sample_rate, n_fft=m.n_fft, hop_length=m.hop_length, win_length=m.win_length,
        window=m.window if m.window != "rect" else "boxcar", center=m.center,
        pad_mode=m.pad_mode, power=power, n_mels=m.n_mels, fmin=m.f_min, fmax=m.f_max,
        htk=m.mel_scale == "htk", norm=m.norm, dtype=np.float64)
    return np.log(S + m.log_offset)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
@pytest.mark.parametrize("norm", [None, "slaney"])
@pytest.mark.parametrize("n_fft,n_mels,fmin,fmax", [(512, 40, 20.0, 8000.0), (400, 64, 0.0, 7600.0),
                                                     (1024, 80, 60.0, 4000.0)])
def test_filterbank_matches_librosa(scale, norm, n_fft, n_mels, fmin, fmax):
    ours = mel_filterbank(SR, n_fft, n_mels, fmin, fmax, scale, norm).numpy()
    ref = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                              htk=scale == "htk", norm=norm, dtype=np.float64)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-9 * max(1.0, ref.max())


@pytest.mark.parametrize("n_fft,win,hop", [(512, 480, 160), (512, 400, 160), (256, 256, 128),
                                           (1024, 640, 320)])
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("scale,norm", [("htk", None), ("slaney", "slaney")])
def test_logmel_matches_librosa(n_fft, win, hop, center, scale, norm):
    x = _signal()
    m = LogMel(n_fft=n_fft, win_length=win, hop_length=hop, mel_scale=scale, norm=norm,
               center=center)
    ours = m(torch.from_numpy(x))
    assert ours.shape == (1, 1, 40, m.num_frames(len(x)))
    ref = _librosa_logmel(x, m)
    ours = ours[0, 0].numpy()
    if center:
        assert ours.shape == ref.shape  # identical framing with center=True
    else:
        # ours frames win_length samples, librosa n_fft: we may have extra frames at the end
        assert ours.shape[1] >= ref.shape[1] >= ours.shape[1] - (n_fft - win) // hop - 1
    n = ref.shape[1]
    assert np.abs(ours[:, :n] - ref).max() < TOL32
    # float64 module: much tighter
    ours64 = m.double()(torch.from_numpy(x.astype(np.float64)))[0, 0].numpy()
    assert ours64.dtype == np.float64
    assert np.abs(ours64[:, :n] - ref).max() < TOL64


@pytest.mark.parametrize("window", ["hamming", "blackman", "rect"])
def test_other_windows_and_power(window):
    x = _signal(seed=1)
    m = LogMel(window=window, power=1.0, center=True)
    ref = _librosa_logmel(x, m, power=1.0)
    assert np.abs(m(torch.from_numpy(x))[0, 0].numpy() - ref).max() < TOL32


def test_constant_pad_mode_matches_librosa():
    x = _signal(seed=2)
    m = LogMel(center=True, pad_mode="constant", n_mels=32, f_min=0.0)
    ref = _librosa_logmel(x, m)
    assert np.abs(m(torch.from_numpy(x))[0, 0].numpy() - ref).max() < TOL32


@pytest.mark.parametrize("dct_norm", ["ortho", None])
@pytest.mark.parametrize("center", [False, True])
def test_mfcc_matches_librosa(dct_norm, center):
    x = _signal(seed=3)
    m = MFCC(n_mfcc=13, dct_norm=dct_norm, center=center, n_mels=40, mel_scale="slaney")
    ours = m(torch.from_numpy(x))[0, 0].numpy()
    assert ours.shape == (13, m.num_frames(len(x)))
    # DCT part alone: librosa's mfcc on OUR log-mel (passing S skips its dB scaling)
    logmel = m.log_mel(torch.from_numpy(x))[0].double().numpy()
    ref = librosa.feature.mfcc(S=logmel, n_mfcc=13, dct_type=2, norm=dct_norm)
    assert np.abs(ours - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    # end to end against librosa's mel
    ref_full = librosa.feature.mfcc(S=_librosa_logmel(x, m), n_mfcc=13, dct_type=2, norm=dct_norm)
    n = ref_full.shape[1]
    scale = 1.0 if dct_norm == "ortho" else 2.0 * 40  # unnormalised DCT sums 40 terms, x2
    assert np.abs(ours[:, :n] - ref_full).max() < TOL32 * scale


def test_dct_matrix_is_orthonormal():
    d = dct_matrix(40, 40, "ortho")
    assert torch.allclose(d @ d.T, torch.eye(40, dtype=torch.float64), atol=1e-12)


def test_num_frames_matches_output_and_framing_contract():
    for center in (False, True):
        m = LogMel(center=center)
        for n in (480, 481, 639, 640, 1000, 16000, 16161):
            x = torch.randn(1, n, generator=torch.Generator().manual_seed(n)) * 0.1
            assert m(x).shape[-1] == m.num_frames(n), (center, n)
    m = LogMel()
    assert m.num_frames(16000) == 98 and m.num_frames(479) == 0
    # center=False: frame t depends only on samples [t*hop, t*hop + win)
    x = torch.from_numpy(_signal(4000))
    full = m(x)[0, 0]
    for t in (0, 5, full.shape[-1] - 1):
        alone = m(x[t * m.hop_length : t * m.hop_length + m.win_length])[0, 0, :, 0]
        assert torch.allclose(full[:, t], alone, atol=1e-5)


def test_batch_equals_single_and_out_shape():
    xs = torch.stack([torch.from_numpy(_signal(seed=s)) for s in range(3)])
    for cls in (LogMel, MFCC):
        m2, m1 = cls(), cls(out_shape="1d")
        batch = m2(xs)
        assert batch.shape[:2] == (3, 1) and batch.shape[2] == m2.n_features
        for i in range(3):
            assert torch.allclose(batch[i], m2(xs[i])[0], atol=1e-5)
        flat = m1(xs)
        assert flat.shape == batch.shape[:1] + batch.shape[2:]
        assert torch.equal(flat, batch[:, 0])


@pytest.mark.parametrize("dft", ["fft", "conv"])
def test_state_dict_and_jit_trace_roundtrip(dft):
    m = MFCC(n_mfcc=13, center=True, dft=dft).eval()
    sd = m.state_dict()
    # window / DFT kernels follow from the arguments: non-persistent, so the keys do not
    # depend on ``dft`` and a checkpoint of either path loads into the other
    assert set(sd) == {"mel_fb", "dct_mat"}
    assert sd["mel_fb"].shape == (40, 257) and sd["dct_mat"].shape == (13, 40)
    assert (dft == "conv") == hasattr(m, "dft_kernel")
    # buffers load back into a fresh module; a tampered one changes the output
    fresh = MFCC(n_mfcc=13, center=True, dft=dft)
    fresh.load_state_dict(sd)
    x = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    assert torch.equal(fresh(x), m(x))
    sd2 = {k: v.clone() for k, v in sd.items()}
    sd2["mel_fb"] *= 2
    fresh.load_state_dict(sd2)
    assert not torch.allclose(fresh(x), m(x))
    other = MFCC(n_mfcc=13, center=True, dft="conv" if dft == "fft" else "fft")
    other.load_state_dict(sd)  # strict, across paths
    assert torch.allclose(other(x), m(x), atol=1e-4)

    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # nothing baked in by accident
        traced = torch.jit.trace(m, x)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x2 = torch.randn(3, 24000, generator=torch.Generator().manual_seed(1)) * 0.1
    assert torch.allclose(loaded(x2), m(x2), atol=1e-5)  # other batch and length


def _old_checkpoint_kernel(win_length=480, window="hann", n_fft=512):
    """The ``dft_kernel`` buffer that checkpoints saved before ``dft`` existed."""
    return LogMel(n_fft=n_fft, win_length=win_length, window=window, dft="conv").dft_kernel


@pytest.mark.parametrize("dft", ["fft", "conv"])
def test_old_checkpoint_with_dft_kernel_loads(dft):
    class Pipe(torch.nn.Module):  # a front-end under a prefix, as in KwsPipeline
        def __init__(self, **kw):
            super().__init__()
            self.frontend = LogMel(**kw)
            self.head = torch.nn.Linear(40, 2)

    ref = Pipe(dft="conv")
    old = dict(ref.state_dict(), **{"frontend.dft_kernel": _old_checkpoint_kernel()})
    new = Pipe(dft=dft)
    result = new.load_state_dict(old)  # strict: the stale key is dropped, not "unexpected"
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(new.head.weight, ref.head.weight)
    x = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0)) * 0.1
    assert torch.allclose(new.frontend(x), ref.frontend(x), atol=1e-4)
    # a kernel built for another window must not load silently
    for kw in ({"win_length": 400}, {"window": "hamming"}):
        bad = dict(old, **{"frontend.dft_kernel": _old_checkpoint_kernel(**kw)})
        with pytest.raises(RuntimeError, match=r"frontend\.dft_kernel: the checkpoint's DFT kernel"):
            Pipe(dft=dft).load_state_dict(bad)


# fft vs conv: the same transform, so they agree to float32 rounding. Where the power is
# large this is ~1e-6 relative; the log-mel (log_offset 1e-6) agrees to < 1e-4 absolute.
FFT_CONFIGS = [
    dict(),
    dict(center=True),
    dict(center=True, pad_mode="constant"),
    dict(win_length=400, hop_length=160),
    dict(win_length=256, n_fft=512, center=True, window="hamming"),
    dict(n_fft=400, win_length=400, power=1.0),
    dict(power=1.0, center=True, out_shape="1d"),
    dict(n_fft=1024, win_length=640, hop_length=320, n_mels=64, out_shape="1d"),
]


@pytest.mark.parametrize("cls", [LogMel, MFCC])
@pytest.mark.parametrize("kw", FFT_CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_fft_path_matches_conv_path(cls, kw):
    xs = torch.stack([torch.from_numpy(_signal(seed=s)) for s in range(3)])  # batch > 1
    fft, conv = cls(dft="fft", **kw), cls(dft="conv", **kw)
    a, b = fft(xs), conv(xs)
    assert a.shape == b.shape
    assert a.shape[0] == 3 and a.shape[-1] == fft.num_frames(xs.shape[-1])
    assert a.dim() == (4 if fft.out_shape == "2d" else 3)
    scale = 1.0 if cls is LogMel else 2.0  # MFCC (ortho DCT): sums 40 terms of the log-mel
    assert (a - b).abs().max() < 1e-4 * scale
    pa, pb = fft.power_spectrogram(xs), conv.power_spectrogram(xs)
    assert pa.shape == pb.shape == (3, fft.n_fft // 2 + 1, a.shape[-1])
    big = pb > 1e-3 ** (fft.power / 2) * pb.max()  # power within 30 dB of the peak
    assert torch.allclose(pa[big], pb[big], rtol=1e-4, atol=0)
    assert (pa - pb).abs().max() <= 1e-5 * pb.max()
    # float64: what is left is the conv kernel's one-time float32 rounding (cos * window)
    a64, b64 = fft.double()(xs.double()), conv.double()(xs.double())
    assert a64.dtype == torch.float64 and (a64 - b64).abs().max() < 1e-5 * scale


def _cut_frames(x, m):
    """(B, samples) -> frames (B, win_length, n) cut by hand: pad as ``center`` says, frame j =
    padded samples [j*hop, j*hop + win) (the window's start inside librosa's n_fft frame)."""
    n = m.num_frames(x.shape[-1])
    if m.center:
        x = torch.nn.functional.pad(x[:, None], (m.n_fft // 2, m.n_fft // 2), mode=m.pad_mode)
        x = x[:, 0, (m.n_fft - m.win_length) // 2 :]
    return torch.stack([x[:, j * m.hop_length : j * m.hop_length + m.win_length]
                        for j in range(n)], dim=2)


@pytest.mark.parametrize("dft", ["fft", "conv"])
@pytest.mark.parametrize("cls,kw", [(LogMel, {}), (LogMel, {"center": True, "win_length": 400}),
                                    (LogMel, {"center": True, "pad_mode": "constant",
                                              "out_shape": "1d"}),
                                    (MFCC, {"n_mfcc": 13, "power": 1.0})],
                         ids=["logmel", "logmel-center-reflect", "logmel-center-1d", "mfcc"])
def test_frame_features_equal_forward(dft, cls, kw):
    """``frame_features`` (what KwsPipeline.step calls per hop) on hand-cut frames equals
    ``forward`` on the whole signal, frame by frame; one frame alone too."""
    m = cls(dft=dft, **kw)
    xs = torch.stack([torch.from_numpy(_signal(3000, seed=s)) for s in range(2)])
    whole = m(xs)
    frames = _cut_frames(xs, m)
    assert frames.shape == (2, m.win_length, whole.shape[-1])
    per = m.frame_features(frames)
    assert per.shape == whole.shape
    assert torch.allclose(per, whole, atol=1e-4)
    one = m.frame_features(frames[:1, :, 5:6])  # (1, win, 1): a streamer's hop
    assert torch.allclose(one[..., 0], whole[:1, ..., 5], atol=1e-4)
    with pytest.raises(ValueError, match=rf"expected frames \(batch, {m.win_length}, n\)"):
        m.frame_features(frames[:, :-1])


@pytest.mark.parametrize("dft", ["fft", "conv"])
@pytest.mark.parametrize("power", [2.0, 1.0])
def test_gradients_flow_through_both_paths(dft, power):
    x = (torch.from_numpy(_signal(4000, seed=4))[None].repeat(2, 1)).requires_grad_(True)
    x.data[1, :800] = 0.0  # exact zeros: power 1 must still give finite gradients
    m = LogMel(dft=dft, power=power, center=True)
    m(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # both paths give the same gradient (to float32 rounding)
    x2 = x.detach().clone().requires_grad_(True)
    LogMel(dft="conv" if dft == "fft" else "fft", power=power, center=True)(x2).square().mean().backward()
    assert torch.allclose(x.grad, x2.grad, rtol=1e-3, atol=1e-3 * x2.grad.abs().max().item())


def test_default_dft_is_fft_and_bad_dft_is_an_error():
    # fft is the default: ~16x fewer MACs per frame than the conv DFT and exports to ONNX
    # (benchmarks/results/frontend_cost.md)
    assert LogMel().dft == "fft" and MFCC().dft == "fft" and build_frontend(None).dft == "fft"
    assert build_frontend({"type": "mfcc", "dft": "conv"}).dft == "conv"
    with pytest.raises(KwsError, match=r"frontend\.dft: must be one of \['fft', 'conv'\], got 'stft'"):
        build_frontend({"dft": "stft"})
    with pytest.raises(KwsError, match=r"frontend\.dft: must be one of"):
        MFCC(dft=None)


@pytest.mark.parametrize("dft", ["fft", "conv"])
def test_torch_export_dynamic_length(dft):
    m = LogMel(dft=dft).eval()
    x = torch.randn(2, 16000) * 0.1
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=1000, max=64000)},)
    ep = torch.export.export(m, (x,), dynamic_shapes=dims)
    x2 = torch.randn(3, 20000) * 0.1
    assert torch.allclose(ep.module()(x2), m(x2), atol=1e-5)


@pytest.mark.parametrize("dft", ["fft", "conv"])
@pytest.mark.parametrize("cls,kw", [(LogMel, {}), (LogMel, {"center": True}),
                                    (MFCC, {"n_mfcc": 13})], ids=["logmel", "logmel-center", "mfcc"])
def test_onnx_export_runs_in_onnxruntime(tmp_path, dft, cls, kw):
    """torch.onnx.export(dynamo=True) (the default exporter; needs onnxscript): both paths
    export with dynamic batch and samples; the fft path becomes an ONNX DFT op (opset >= 18).
    The legacy TorchScript exporter (dynamo=False) cannot export the fft path (no symbolic
    for aten::fft_rfft, and none for a dynamic-length unfold); it does export "conv"."""
    pytest.importorskip("onnx", reason="ONNX export test needs onnx (pip install onnx)")
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    ort = pytest.importorskip("onnxruntime", reason="running the export needs onnxruntime")
    m = cls(dft=dft, **kw).eval()
    x = torch.randn(2, 16000) * 0.1
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=1000, max=64000)},)
    path = tmp_path / f"{dft}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation chatter
        torch.onnx.export(m, (x,), str(path), dynamo=True, input_names=["wave"],
                          dynamic_shapes=dims)
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("DFT" in ops) == (dft == "fft") and ("Conv" in ops) == (dft == "conv")
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for shape in ((3, 20000), (1, 480 if not m.center else 1000)):  # other batch and length
        x2 = torch.randn(*shape) * 0.1
        out = sess.run(None, {"wave": x2.numpy()})[0]
        ref = m(x2).numpy()
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < 1e-4


def test_build_frontend_and_errors():
    assert isinstance(build_frontend(None), LogMel)
    m = build_frontend({"type": "mfcc", "n_mfcc": 10, "n_mels": 32, "hop_length": 320})
    assert isinstance(m, MFCC) and m.n_mfcc == 10 and m.hop_length == 320
    raw = build_frontend({"type": "none"})
    assert isinstance(raw, RawWaveform)
    x = torch.randn(2, 100)
    assert raw(x) is x and raw.num_frames(100) == 100

    with pytest.raises(KwsError, match=r"frontend\.type: unknown front-end 'fbank'"):
        build_frontend({"type": "fbank"})
    with pytest.raises(KwsError, match=r"frontend\.n_mel: unknown parameter for 'logmel'"):
        build_frontend({"type": "logmel", "n_mel": 40})
    with pytest.raises(KwsError, match=r"frontend\.n_mfcc: unknown parameter for 'logmel'"):
        build_frontend({"type": "logmel", "n_mfcc": 13})
    with pytest.raises(KwsError, match=r"frontend\.win_length: must be <= n_fft"):
        build_frontend({"win_length": 600})
    with pytest.raises(KwsError, match=r"frontend\.f_max: must be <= sample_rate / 2"):
        build_frontend({"f_max": 9000})
    with pytest.raises(KwsError, match=r"frontend\.mel_scale"):
        build_frontend({"mel_scale": "bark"})
    with pytest.raises(KwsError, match=r"frontend\.n_mfcc: must be <= n_mels"):
        build_frontend({"type": "mfcc", "n_mfcc": 50})
    with pytest.raises(KwsError, match=r"frontend\.hop_length: must be a positive integer"):
        build_frontend({"hop_length": 0})


def test_short_input_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than win_length=480"):
        LogMel()(torch.zeros(100))
    with pytest.raises(ValueError, match="reflect padding"):
        LogMel(center=True)(torch.zeros(100))
