"""``kwskit quantize``: int8 and fp16 ONNX models, weights rounded to n bits, the run it writes.

One DS-CNN-S trained for a few seconds on the tiny synthetic set is quantized once per mode
and shared by the tests (BC-ResNet-1, whose graph adds SubSpectralNorm's Mul/Add, residual
Adds and Swish, is measured on real speech by benchmarks/quantize_table.py; its export alone
takes longer than these tests should). Tolerances (clips of the
tiny set, real activations, not noise):

- int8 clip model vs the float model: top-1 agreement >= 90%, mean |dp| < 0.05;
- int8 streaming model, fed a long signal in uneven blocks, vs the float model's whole-signal
  scores (what the float streaming model equals to 1e-4, tests/test_export.py): top-1
  agreement >= 90%, mean |dp| < 0.05 -- and far from a streamer whose states are reset;
- fp16 vs float: |dp| < 1e-2 everywhere; stored tensors 45-60% of the float ones.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="quantization needs onnxruntime (kwskit[onnx])")
pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript (kwskit[onnx])")

from kwskit.cli import main  # noqa: E402
from kwskit.compress import onnx_quant as oq  # noqa: E402
from kwskit.compress.quantize import quantize_run, round_weights, weight_layers  # noqa: E402
from kwskit.config import load_config  # noqa: E402
from kwskit.errors import KwsError  # noqa: E402
from kwskit.eval.evaluate import split_clips  # noqa: E402
from kwskit.models.io import load_model  # noqa: E402
from kwskit.runtime import OnnxClassifier, OnnxStreamer, initial_states  # noqa: E402
from kwskit.stream.streaming import scores_whole  # noqa: E402
from kwskit.train.loop import fit  # noqa: E402
from model_checks import NO_TORCH_PRELUDE

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

TINY = ["model.name=dscnn_s", "data.labels=[yes, no, up, down]", "train.batch_size=16",
        "optim.name=adam", "optim.lr=0.003", "optim.weight_decay=0", "schedule.name=constant",
        "train.threads=1", "augment.noise_prob=0.3", "train.epochs=8",
        "train.amp=false"]  # float32 everywhere: the same model whether or not a CPU has bf16


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("q") / "float"
    fit(load_config(None, TINY), run, data=str(tiny_data), quiet=True, track=False)
    return run


@pytest.fixture(scope="module")
def int8_run(trained, tiny_data):
    out = trained.parent / "int8"
    record = quantize_run(trained, out, mode="int8", data=str(tiny_data), calib_clips=40,
                          stream_calib_s=5.0)
    return out, record


def _clips(run, data, split="test"):
    _, cfg, labels = load_model(run)
    waves, targets, _ = split_clips(cfg, labels, data, split)
    return waves.astype(np.float32) / 32767.0, targets


def _float_probs(run, audio):
    model = load_model(run)[0]
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(audio)), -1).numpy()


def test_int8_clip_model_runs_integer_kernels_and_agrees(trained, int8_run, tiny_data):
    out, record = int8_run
    clip = out / record["onnx"]["clip"]
    ops = oq.optimized_op_counts(clip)
    n_conv = sum(1 for _, m in load_model(trained)[0].backbone.named_modules()
                 if isinstance(m, torch.nn.Conv2d))
    # every convolution of the backbone became an integer kernel; none is left in float
    assert ops.get("QLinearConv") == n_conv and "Conv" not in ops
    assert ops.get("QGemm") == 1
    assert record["ops"]["clip"] == ops and oq.integer_ops(ops) > n_conv
    # the front-end and the softmax stayed float
    assert {"DFT", "Log", "Softmax"} <= set(ops)

    audio, _ = _clips(trained, tiny_data)
    want = _float_probs(trained, audio)
    got = OnnxClassifier(clip).probs(audio)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    assert np.abs(got - want).mean() < 0.05
    assert abs(record["val_acc"] - record["float_val_acc"]) <= 0.1
    assert record["calibration"]["clips"] == 40
    assert record["tensor_bytes"]["clip"] < 0.8 * record["float_tensor_bytes"]["clip"]


def test_int8_stream_model_carries_states_and_agrees(trained, int8_run):
    from test_export import _blocks
    from test_streaming import make_signal

    out, record = int8_run
    path = out / record["onnx"]["stream"]
    assert oq.optimized_op_counts(path).get("QLinearConv", 0) > 0
    rng = np.random.default_rng(0)
    from conftest import make_clip

    words = ["yes", "no", "up", "down", "bed"]
    signal = np.concatenate([make_clip(words[i % 5], 30 + i, 0) for i in range(8)]
                            + [make_signal(1.0, seed=2)])
    ref = scores_whole(load_model(trained)[0], signal)
    streamer = OnnxStreamer(path)
    got = np.concatenate([streamer.step(b) for b in _blocks(signal, int(rng.integers(100)))])
    n = len(got)
    assert n > 0.8 * len(ref)
    assert (got.argmax(1) == ref[:n].argmax(1)).mean() >= 0.9
    assert np.abs(got - ref[:n]).mean() < 0.05
    # states carried: the same model given fresh states at every call is far off
    names = [s["name"] for s in streamer.card["states"]]
    amnesic = []
    for i in range(0, len(signal) // streamer.feed * streamer.feed, streamer.feed):
        feeds = {"audio": signal[None, i:i + streamer.feed],
                 **dict(zip(names, initial_states(streamer.card)))}
        amnesic.append(streamer.session.run(["probs"], feeds)[0][0].T)
    amnesic = np.concatenate(amnesic)[streamer.warmup_frames:][:n]
    assert np.abs(amnesic - ref[:len(amnesic)]).mean() > 3 * np.abs(got - ref[:n]).mean()
    ag = record["stream_agreement"]
    assert ag["frames"] > 0 and ag["top1_agreement"] >= 0.9 and ag["mean_abs_diff"] < 0.05


def test_quantized_run_is_an_ordinary_run(trained, int8_run, tiny_data, capsys):
    out, record = int8_run
    for name in ("config.yaml", "labels.json", "metrics.json", "checkpoints/best.pt",
                 "quantization.json", record["onnx"]["clip"], record["onnx"]["stream"]):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["best"]["val_acc"] == record["val_acc"]
    # the float checkpoint came along: torch commands work and give the float model
    a, b = load_model(out)[0].state_dict(), load_model(trained)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["eval", str(out), "--data", str(tiny_data), "--split", "validation",
                 "--json"]) == 0
    text = capsys.readouterr().out
    assert "int8.onnx (ONNX Runtime, the quantized model of this run)" in text
    assert json.loads(text.splitlines()[-1])["accuracy"] == pytest.approx(record["val_acc"])
    assert main(["eval", str(out / "checkpoints" / "best.pt"), "--data", str(tiny_data),
                 "--split", "validation", "--json"]) == 0
    text = capsys.readouterr().out
    assert "(PyTorch)" in text
    assert json.loads(text.splitlines()[-1])["accuracy"] == pytest.approx(record["float_val_acc"])
    assert main(["eval", str(out / record["onnx"]["clip"]), "--data", str(tiny_data),
                 "--split", "validation"]) == 0
    assert {p.name for p in (out / "eval").iterdir()} == {"data-validation",
                                                          "data-validation-dscnn_s-int8"}


BLOCK_TORCH = NO_TORCH_PRELUDE + """from kwskit.cli import main
assert main(["stream", sys.argv[1], sys.argv[2], "--json", "--threshold", "0.3"]) == 0
assert "torch" not in sys.modules
"""


def test_stream_command_streams_a_quantized_run_without_torch(int8_run, tmp_path):
    import soundfile as sf

    from kwskit.stream.cli import open_streamer

    out, record = int8_run
    streamer, labels, _ = open_streamer(str(out), 1.0, 1)
    assert isinstance(streamer, OnnxStreamer) and streamer.path.endswith("int8-stream.onnx")
    with pytest.raises(KwsError, match="quantize again with --window-s 2"):
        open_streamer(str(out), 2.0, 1)
    from conftest import make_clip

    sf.write(str(tmp_path / "a.wav"), np.concatenate([make_clip("yes", 40, 0)] * 3), 16000)
    res = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(out), str(tmp_path / "a.wav")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["files"][0]["duration_s"] == 3.0


def test_fp16_halves_the_tensors_and_keeps_the_numbers(trained, tiny_data):
    out = trained.parent / "fp16"
    record = quantize_run(trained, out, mode="fp16", data=str(tiny_data))
    assert record["tensor_bytes"]["clip"] / record["float_tensor_bytes"]["clip"] == \
        pytest.approx(0.5, abs=0.1)
    assert record["bytes"]["clip"] < record["float_bytes"]["clip"]
    audio, _ = _clips(trained, tiny_data)
    got = OnnxClassifier(out / record["onnx"]["clip"]).probs(audio)
    assert np.abs(got - _float_probs(trained, audio)).max() < 1e-2
    assert record["stream_agreement"]["max_abs_diff"] < 1e-2


def test_rounding_to_n_bits_per_output_channel(trained):
    model = load_model(trained)[0]
    original = {n: layer.weight.detach().clone() for n, layer in weight_layers(model)}
    assert len(original) == 10  # 9 convolutions and the head
    for bits in (8, 4, 2, 1):
        m = load_model(trained)[0]
        counts = round_weights(m, bits)
        assert counts["tensors"] == len(original)
        for name, layer in weight_layers(m):
            w, w0 = layer.weight.detach().flatten(1), original[name].flatten(1)
            for c in range(w.shape[0]):
                assert len(torch.unique(w[c])) <= 2 ** bits
            if bits == 1:  # sign(w) * mean|w| of the channel
                want = torch.where(w0 >= 0, 1.0, -1.0) * w0.abs().mean(1, keepdim=True)
                torch.testing.assert_close(w, want)
            else:  # symmetric: the grid's steps are one scale per channel
                assert (w.abs().amax(1) <= w0.abs().amax(1) + 1e-6).all()
        # bytes at the precision: fewer bits, fewer bytes
        assert counts["bytes"] < counts["bytes_fp32"]
    with pytest.raises(KwsError, match="--bits"):
        round_weights(model, 0)


def test_weights_mode_writes_a_torch_run(trained, tiny_data):
    out = trained.parent / "w2"
    record = quantize_run(trained, out, mode="weights", bits=2, data=str(tiny_data))
    q = json.loads((out / "quantization.json").read_text())
    assert q["mode"] == "weights" and q["bits"] == 2 and "onnx" not in q
    model = load_model(out)[0]
    for _, layer in weight_layers(model):
        assert all(len(torch.unique(row)) <= 3 for row in layer.weight.detach().flatten(1))
    assert 0.0 <= record["val_acc"] <= 1.0 and record["weights"]["values"] > 0


def test_bad_input_is_one_clear_error(trained, tmp_path, capsys):
    out = tmp_path / "new"
    cases = [(["--mode", "weights", "--bits", "0"], "--bits: must be an integer from 1 to 8"),
             (["--mode", "weights", "--bits", "9"], "--bits: must be an integer from 1 to 8"),
             (["--bits", "4"], "--mode int8 quantizes to 8 bits"),
             (["--calib-clips", "0"], "--calib-clips")]
    for args, msg in cases:
        assert main(["quantize", str(trained), "--out", str(out), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert main(["quantize", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["quantize", str(trained), "--out", str(tmp_path / "full"), "--mode",
                 "weights"]) == 2
    assert "choose a new or empty folder" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in (tmp_path / "full").iterdir()) == ["x"]
