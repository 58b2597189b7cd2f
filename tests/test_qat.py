"""Quantization-aware training: n-bit fake quantization, the straight-through estimator,
BatchNorm folding, a QAT run that trains, reloads and streams, and its int8 ONNX export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from kwskit.cli import main as cli
from kwskit.compress.qat import calibrate, prepare_qat
from kwskit.errors import KwsError
from kwskit.layers.quant import (ActQuant, QuantConv, apply_qat, fake_quant_weight,
                                 weight_scale)
from kwskit.models.io import load_model, read_checkpoint
from kwskit.train.loop import fit
from model_checks import randomize_batchnorm, recipe_pipeline
from test_streaming import LABELS, chunk_sizes, make_signal, stream_run
from test_train import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def _qat_pipeline(name: str, weight_bits: int = 8, act_bits: int = 8, seed: int = 0):
    """A recipe pipeline with random BatchNorm statistics, made quantization-aware and
    calibrated on a little noise, in eval mode."""
    torch.manual_seed(seed)
    p = recipe_pipeline(name, len(LABELS))
    randomize_batchnorm(p, seed)
    apply_qat(p, {"weight_bits": weight_bits, "act_bits": act_bits})
    calibrate(p, [(torch.randn(4, 16000) * 0.1, None)], clips=4)
    return p.eval()


@pytest.fixture(scope="module")
def float_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "float"
    fit(tiny_cfg(2), out, data=str(tiny_data), quiet=True, track=False)
    return out


@pytest.fixture(scope="module")
def qat_w4(float_run, tiny_data, tmp_path_factory):
    """``kwskit quantize FLOAT --qat --weight-bits 4``: 1 epoch; (run, metrics)."""
    out = tmp_path_factory.mktemp("qat") / "w4a8"
    code = cli(["quantize", str(float_run), "--qat", "--weight-bits", "4", "--act-bits", "8",
                "--epochs", "1", "--data", str(tiny_data), "--calib-clips", "32",
                "--out", str(out), "--no-mlflow"])
    assert code == 0
    return out, json.loads((out / "metrics.json").read_text())


# ------------------------------------------------------------------------------ quantizers
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_weights_take_at_most_2_pow_n_values_per_channel(bits):
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.1, 2.0, 16)[:, None, None, None]
    q = fake_quant_weight(w, bits)
    scale = weight_scale(w, bits)
    for c in range(w.shape[0]):
        values = torch.unique(q[c])
        assert len(values) <= 2 ** bits
        # symmetric integer multiples of the channel's step (1 bit: exactly +-mean|w|)
        steps = values / scale[c]
        assert torch.allclose(steps, steps.round(), atol=1e-4)
        assert steps.abs().max() <= max(2 ** (bits - 1) - 1, 1) + 1e-4
    if bits == 1:
        assert all(len(torch.unique(q[c])) == 2 for c in range(16))
        assert torch.allclose(q.abs().flatten(1).amax(1), w.abs().flatten(1).mean(1))
    if bits == 8:
        assert (q - w).abs().max() <= scale.max() / 2 + 1e-6  # no clipping at 8 bits
        assert min(len(torch.unique(q[c])) for c in range(16)) > 2 ** 4


def test_activations_take_at_most_2_pow_n_values_and_zero_is_exact():
    act = ActQuant(4)
    x = torch.randn(1000) * 3 + 1
    act.train()(x)  # first batch sets the range
    y = act.eval()(torch.cat([x, torch.zeros(5)]))
    assert len(torch.unique(y)) <= 16 and (y[-5:] == 0).all()
    assert act.lo.item() == pytest.approx(x.min().item())
    assert act.hi.item() == pytest.approx(x.max().item())


@pytest.mark.parametrize("bits", [1, 4])
def test_straight_through_gradients_train_the_float_weights(bits):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, bias=False)
    bn = nn.BatchNorm2d(8)
    layer = QuantConv(conv, bn, bits, 8).train()
    before = conv.weight.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(2, 4, 6, 6)).pow(2).mean().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert bn.weight.grad is not None  # gamma trains through the folded weights
    opt.step()
    assert not torch.equal(conv.weight, before)


@pytest.mark.parametrize("name, folds", [("dscnn_s", 9), ("bcresnet1", 18), ("tcresnet8", 10)])
def test_batchnorm_folding_equals_conv_then_batchnorm(name, folds):
    """Before quantization, the folded conv equals conv + eval-mode BatchNorm (atol 1e-5)."""
    torch.manual_seed(0)
    p = recipe_pipeline(name, len(LABELS))
    randomize_batchnorm(p, seed=1)
    apply_qat(p, {"weight_bits": 8, "act_bits": 8})
    folded = [m for m in p.modules() if isinstance(m, QuantConv) and m.bn is not None]
    assert len(folded) == folds
    with torch.no_grad():
        for m in folded:
            conv, bn = m.layer, m.bn.eval()
            x = torch.randn(2, conv.in_channels, *([20] * (conv.weight.dim() - 2)))
            w, b = m.folded()
            torch.testing.assert_close(conv._conv_forward(x, w, b), bn(conv(x)),
                                       atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ a QAT run
def test_qat_run_trains_reloads_and_streams(qat_w4, float_run):
    out, result = qat_w4
    assert len(result["history"]) == 1
    report = json.loads((out / "qat.json").read_text())
    assert report["spec"] == {"weight_bits": 4, "act_bits": 8, "first_last_bits": 8}
    for key in ("float_val_acc", "rounded_val_acc", "qat_val_acc"):
        assert 0.0 <= report[key] <= 1.0
    arch = read_checkpoint(out / "checkpoints" / "best.pt")["arch"]
    assert arch["qat"] == report["spec"] and arch["name"] == "dscnn_s"

    load_model(out, "last")  # what --resume rebuilds
    model, _, labels = load_model(out)
    quant = [m for m in model.modules() if isinstance(m, QuantConv)]
    assert [m.weight_bits for m in quant] == [8] + [4] * (len(quant) - 2) + [8]
    assert all(m.act is None or m.act.seen.item() > 0 for m in quant)
    # the fine-tuning moved the float weights
    start = load_model(float_run)[0].state_dict()["backbone.body.ds1.pw.weight"]
    assert not torch.equal(model.state_dict()["backbone.body.ds1.pw.layer.weight"], start)
    with torch.no_grad():  # the 4-bit model holds 4-bit weights
        w = quant[3].quantized_weight()
        assert max(len(torch.unique(w[c])) for c in range(w.shape[0])) <= 15

    # streamed in random chunks == the whole-signal forward, frame for frame
    from kwskit.stream.streaming import Streamer, logits_whole

    signal = make_signal(3.0, seed=2)
    streamer = Streamer(model)
    unit = streamer.unit
    sizes = chunk_sizes(len(signal) // unit * unit, seed=3)
    logits, _, _ = stream_run(streamer, signal[: sum(sizes)], sizes)
    whole = logits_whole(model, signal[: sum(sizes)])
    n = min(len(logits), len(whole))
    assert n > 10
    np.testing.assert_allclose(logits[:n], whole[:n], atol=1e-4, rtol=0)


def test_a_qat_run_is_not_quantized_twice(qat_w4):
    out, _ = qat_w4
    with pytest.raises(KwsError, match="quantization-aware run already"):
        prepare_qat(out, {"weight_bits": 8, "act_bits": 8})


@pytest.mark.parametrize("args, field", [(["--weight-bits", "9"], "weight_bits"),
                                         (["--bits", "0"], "weight_bits"),
                                         (["--act-bits", "2"], "act_bits")])
def test_bad_bits_give_one_clear_error(float_run, tmp_path, capsys, args, field):
    out = tmp_path / "q"
    code = cli(["quantize", str(float_run), "--qat", "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and field in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(KwsError, match="weight_bits"):
        apply_qat(recipe_pipeline("dscnn_s", 3), {"weight_bits": "8"})


# ------------------------------------------------------------------------------ export
def test_8bit_qat_model_exports_quantize_dequantize_pairs(tmp_path):
    """The clip export holds QuantizeLinear/DequantizeLinear pairs and computes what PyTorch
    does (the pairs emulated in float); ONNX Runtime's optimiser fuses the convs into integer
    QLinearConv kernels, whose rounding may differ by a step here and there."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx
    import onnxruntime as ort

    from kwskit.export.onnx import export_clip
    from kwskit.runtime import OnnxClassifier

    p = _qat_pipeline("dscnn_s")
    path = tmp_path / "clip.onnx"
    export_clip(p, LABELS, path, name="dscnn_s")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") >= 9 and ops.count("DequantizeLinear") >= 9
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert optimized.count("QLinearConv") >= 8  # 8 of DS-CNN-S's 9 convs run on integers
    clip = make_signal(2.0, seed=5).reshape(2, 16000)
    with torch.no_grad():
        want = torch.softmax(p(torch.from_numpy(clip)), -1).numpy()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(plain.run(["probs"], {"audio": clip})[0], want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(OnnxClassifier(path).probs(clip), want, atol=0.05, rtol=0)
