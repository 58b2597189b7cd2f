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


def test_state_dict_and_jit_trace_roundtrip():
    m = MFCC(n_mfcc=13, center=True).eval()
    sd = m.state_dict()
    assert set(sd) == {"dft_kernel", "mel_fb", "dct_mat"}
    assert sd["mel_fb"].shape == (40, 257) and sd["dct_mat"].shape == (13, 40)
    assert sd["dft_kernel"].shape == (2 * 257, 1, 480)
    # buffers load back into a fresh module; a tampered one changes the output
    fresh = MFCC(n_mfcc=13, center=True)
    fresh.load_state_dict(sd)
    x = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    assert torch.equal(fresh(x), m(x))
    sd2 = {k: v.clone() for k, v in sd.items()}
    sd2["mel_fb"] *= 2
    fresh.load_state_dict(sd2)
    assert not torch.allclose(fresh(x), m(x))

    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # nothing baked in by accident
        traced = torch.jit.trace(m, x)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x2 = torch.randn(3, 24000, generator=torch.Generator().manual_seed(1)) * 0.1
    assert torch.allclose(loaded(x2), m(x2), atol=1e-5)  # other batch and length


def test_torch_export_dynamic_length():
    m = LogMel().eval()
    x = torch.randn(2, 16000) * 0.1
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=1000, max=64000)},)
    ep = torch.export.export(m, (x,), dynamic_shapes=dims)
    x2 = torch.randn(3, 20000) * 0.1
    assert torch.allclose(ep.module()(x2), m(x2), atol=1e-5)


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    m = MFCC(n_mfcc=13).eval()
    x = torch.randn(2, 16000) * 0.1
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=1000, max=64000)},)
    path = tmp_path / "mfcc.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=True, input_names=["wave"],
                      dynamic_shapes=dims)
    sess = ort.InferenceSession(str(path))
    x2 = torch.randn(3, 20000) * 0.1
    out = sess.run(None, {"wave": x2.numpy()})[0]
    assert np.abs(out - m(x2).numpy()).max() < 1e-4


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
