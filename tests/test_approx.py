"""Hardware approximations of SincConv models (kwskit.layers.approx_math, ``kwskit approx``).

The CORDIC sine, the shift-subtract division and the piecewise-linear log stay within their
bounds (and the bounds shrink with iterations / segments); the fixed-point filterbank is close
to the exact one, symmetric, frozen in eval mode and trainable straight-through; an
approximated model reloads from its arch, streams equal to its whole-clip self and exports to
ONNX with the same numbers; bad options and non-SincConv runs give one clear error.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import StreamClassifier, StreamConv1d, StreamSequential
from kwskit.layers.approx_math import (FixedPointSincConv1d, Log2PwlCompression, apply_approx,
                                       approx_spec, cordic_sin, exponent_mantissa, fixed_div,
                                       fixed_point_sinc_filters, from_fixed, log2_pwl, to_fixed)
from kwskit.layers.sinc import LogCompression, SincConv1d
from kwskit.models.io import load_model, read_checkpoint, save_checkpoint
from test_streaming import (LABELS, assert_stream_equals_whole, make_run, make_signal,
                            randomize, recipe_pipeline, scale_head)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


def _max_sin_err(iters: int, bits: int) -> float:
    theta = torch.linspace(-math.pi, math.pi, 20_001, dtype=torch.float64)
    return float((cordic_sin(theta, iters, bits) - torch.sin(theta)).abs().max())


def test_cordic_sin_error_shrinks_with_iterations():
    errs = [_max_sin_err(n, 16) for n in (8, 12, 16)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] < 2e-2 and errs[1] < 1e-3 and errs[2] < 1e-3
    assert _max_sin_err(20, 20) < 5e-5  # more bits and iterations: finer still
    # the phase wraps: any number of whole turns gives the same integer result
    theta = torch.linspace(-3.0, 3.0, 101, dtype=torch.float64)
    assert torch.equal(cordic_sin(theta + 2 * math.pi * 5, 16, 16),
                       cordic_sin(theta - 2 * math.pi * 3, 16, 16))


def test_fixed_div_is_truncated_division_within_one_lsb():
    g = torch.Generator().manual_seed(0)
    bits = 16
    num = to_fixed(torch.rand(20_000, generator=g, dtype=torch.float64) * 4 - 2, bits)
    den = to_fixed(torch.rand(20_000, generator=g, dtype=torch.float64) * 200 - 100, bits)
    den = torch.where(den.abs() < num.abs(), den.sign() * (num.abs() + 1), den)  # |q| < 1
    q = fixed_div(num, den, bits)
    # bit by bit it computes exactly the integer quotient truncated toward zero ...
    assert torch.equal(q, torch.div(num << bits, den, rounding_mode="trunc"))
    # ... so it is less than one LSB from the true quotient of its inputs
    err = (from_fixed(q, bits) - num.double() / den.double()).abs().max()
    assert err < 2.0 ** -bits
    # signs, and saturation just below 2^int_bits
    one = 1 << bits
    got = fixed_div(torch.tensor([3 * one, -3 * one, -one]), torch.tensor([one, one, -2 * one]),
                    bits, int_bits=1)
    assert got.tolist() == [2 * one - 1, -(2 * one - 1), one // 2]


def test_log2_pwl_bounds_and_exponent():
    x = torch.logspace(-8, 8, 400_001, dtype=torch.float64)
    errs = [float((log2_pwl(x, k) - torch.log2(x)).abs().max()) for k in (1, 2, 4, 8)]
    # Mitchell's linear mantissa: max error 1 + log2(ln 2) - 1/ln 2 ... = 0.08607
    assert errs[0] == pytest.approx(0.086071, abs=2e-5)
    assert errs == sorted(errs, reverse=True) and errs[2] < 0.01 and errs[3] < 0.003
    powers = torch.tensor([2.0 ** k for k in range(-20, 21)], dtype=torch.float64)
    assert torch.equal(log2_pwl(powers, 4), torch.log2(powers))  # exact at powers of two
    # the export-friendly split is torch.frexp's, also right beside powers of two
    x32 = torch.cat([torch.logspace(-30, 30, 50_001), powers.float(),
                     torch.nextafter(powers.float(), torch.tensor(0.0)),
                     torch.nextafter(powers.float(), torch.tensor(1e9))])
    e, u = exponent_mantissa(x32)
    m, ee = torch.frexp(x32)
    assert torch.equal(e, (ee - 1).float()) and torch.equal(u, 2 * m - 1)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0


def _sinc_layer(seed: int = 0) -> SincConv1d:
    torch.manual_seed(seed)
    layer = SincConv1d(40, 101, 8)
    with torch.no_grad():  # move the bands off their initial grid, like training does
        layer.low.add_(0.01 * torch.rand(40))
        layer.band.add_(0.005 * torch.rand(40))
    return layer.eval()


def test_fixed_point_filters_close_to_exact_and_symmetric():
    exact = _sinc_layer()
    want = exact.filters().detach()
    errs = {n: float((FixedPointSincConv1d(exact, n, 16).eval().filters() - want).abs().max())
            for n in (8, 12, 16)}
    assert errs[8] > errs[12] > errs[16] and errs[16] < 5e-3
    approx = FixedPointSincConv1d(exact, 16, 16).eval()
    taps = approx.filters()
    assert torch.equal(taps, taps.flip(-1))  # linear phase, exactly
    assert torch.all(taps[:, 0, 50] == 1.0)  # centre: 1 x the window's 1
    assert not torch.equal(taps, want)
    # the same function on its own, with the layer's cut-offs and window
    f1, f2 = exact.band_edges()
    assert torch.equal(fixed_point_sinc_filters(f1, f2, exact.window, 16, 16)[:, None], taps)


def test_fixed_point_filters_are_frozen_in_eval_and_trainable_in_training():
    exact = _sinc_layer()
    approx = FixedPointSincConv1d(exact, 12, 16).eval()
    frozen = approx.filters()
    assert approx.filters() is frozen  # computed once, not per input
    other = _sinc_layer(seed=1)
    approx.load_state_dict(other.state_dict())  # new cut-offs: the taps follow
    assert torch.equal(approx.filters(), FixedPointSincConv1d(other, 12, 16).eval().filters())
    # training: fixed-point values, the exact filters' gradient (straight-through)
    approx.train()
    exact_twin = _sinc_layer(seed=1).train()
    weights = torch.randn(40, 1, 101, generator=torch.Generator().manual_seed(2))
    (approx.filters() * weights).sum().backward()
    (exact_twin.filters() * weights).sum().backward()
    assert torch.allclose(approx.low.grad, exact_twin.low.grad)
    assert torch.allclose(approx.band.grad, exact_twin.band.grad)
    assert torch.allclose(approx.filters(), approx.fixed_filters())


def test_log2pwl_compression_replaces_log1p():
    x = torch.randn(3, 40, 50) * 10
    exact, approx = LogCompression(), Log2PwlCompression(1).eval()
    err = float((approx(x) - exact(x)).abs().max())
    assert 0 < err <= math.log(2.0) * 0.0861
    assert torch.equal(approx(torch.zeros(2, 3)), torch.zeros(2, 3))  # 'same' padding stays 0
    x.requires_grad_(True)
    approx.train()(x).sum().backward()
    assert torch.allclose(x.grad, torch.sign(x) / (1 + x.abs()))


def _toy_sinc_pipeline():
    """A small raw-wave model with the SincConv front (exports in seconds)."""
    from kwskit.features.frontend import build_frontend
    from kwskit.models.pipeline import KwsPipeline

    torch.manual_seed(5)
    body = StreamSequential(OrderedDict(
        sinc=SincConv1d(8, 101, 40), log=LogCompression(), bn=nn.BatchNorm1d(8),
        c=StreamConv1d(8, 8, 5, stride=2), r=nn.ReLU()))
    return KwsPipeline(build_frontend({"type": "none"}),
                       StreamClassifier(body, nn.Linear(8, 4), in_features=1, input_kind="wave"),
                       "wave")


def test_approximated_model_exports_with_the_same_numbers(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from kwskit.export.onnx import export_stream
    from kwskit.runtime import OnnxStreamer
    from kwskit.stream.streaming import scores_whole

    p = randomize(apply_approx(_toy_sinc_pipeline(), {"cordic_iters": 10}), seed=3)
    signal = make_signal(1.5, seed=4)
    scale_head(p, signal)
    export_stream(p, LABELS[:4], tmp_path / "s.onnx", chunk_ms=10, name="toy")
    ort = OnnxStreamer(tmp_path / "s.onnx")
    got = np.concatenate([ort.step(signal[i:i + 999]) for i in range(0, len(signal), 999)])
    whole = scores_whole(p, signal)
    assert got.shape[0] > 0
    np.testing.assert_allclose(got, whole[:got.shape[0]], atol=1e-4, rtol=0)


def _approx_run(tmp_path, spec):
    """A random-weight sincconv_gdsconv run whose checkpoint's arch has ``spec``."""
    run = make_run(tmp_path, "sincconv_gdsconv")
    ck = run / "checkpoints" / "best.pt"
    state = read_checkpoint(ck)
    exact, cfg, labels = load_model(run)
    from kwskit.models.io import arch_of

    state["arch"] = {**arch_of(cfg, len(labels)), "approx": approx_spec(spec)}
    save_checkpoint(ck, state)
    return run, exact


def test_approximated_model_reloads_as_it_is_and_streams_exactly(tmp_path):
    run, exact = _approx_run(tmp_path, {"cordic_iters": 12, "log_segments": 2})
    model, _, _ = load_model(run)
    body = model.backbone.body
    assert type(body.sinc) is FixedPointSincConv1d and body.sinc.iters == 12
    assert type(body.log) is Log2PwlCompression and body.log.segments == 2
    clip = torch.from_numpy(make_signal(1.0, seed=2))[None]
    with torch.no_grad():
        got, ref = model(clip), exact(clip)
    assert not torch.equal(got, ref) and torch.allclose(got, ref, atol=0.5)
    # the state dict is the exact model's: the taps are derived, not stored
    assert model.state_dict().keys() == exact.state_dict().keys()
    assert_stream_equals_whole(model, make_signal(1.6, seed=1), seed=7)


def test_approx_command_writes_a_run(tmp_path, tiny_data, capsys):
    from kwskit.cli import main

    run = make_run(tmp_path, "sincconv_gdsconv")
    out = tmp_path / "approx"
    assert main(["approx", str(run), "--out", str(out), "--data", str(tiny_data),
                 "--cordic-iters", "12", "--log-segments", "4"]) == 0
    assert "val_acc" in capsys.readouterr().out
    for name in ("config.yaml", "labels.json", "metrics.json", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    rec = metrics["approx"]
    assert rec["sinc"] == "cordic" and rec["log"] == "log2pwl" and rec["cordic_iters"] == 12
    assert 0 <= rec["val_acc_before"] <= 1 and rec["val_acc_after"] == metrics["best"]["val_acc"]
    assert 0 < rec["filter_max_abs_err"] < 0.1 and 0 < rec["log_max_abs_err"] < 0.01
    arch = read_checkpoint(out / "checkpoints" / "best.pt")["arch"]
    assert arch["approx"] == approx_spec({"cordic_iters": 12, "log_segments": 4})
    model, _, labels = load_model(out)
    assert labels == LABELS and type(model.backbone.body.sinc) is FixedPointSincConv1d
    # the weights are the source's
    src = read_checkpoint(run / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in src.items())


@pytest.mark.parametrize("options, match", [
    (["--cordic-iters", "0"], "cordic_iters .* 1..32, got 0"),
    (["--frac-bits", "40"], "frac_bits .* 10..24, got 40"),
    (["--log-segments", "0"], "log_segments .* 1..64"),
    (["--sinc", "exact", "--log", "exact"], "approximate nothing"),
])
def test_bad_options_give_one_clear_error(tmp_path, capsys, options, match):
    from kwskit.cli import main

    run = make_run(tmp_path, "sincconv_gdsconv")
    code = main(["approx", str(run), "--out", str(tmp_path / "o"), *options])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()


def test_bad_specs_and_out_folders():
    for spec, match in (({"sinc": "float"}, "sinc .* exact, cordic"),
                        ({"log": "ln"}, "log .* exact, log2pwl"),
                        ({"cordic_iters": 12.5}, "cordic_iters"),
                        ({"cordic_iters": True}, "cordic_iters"),
                        ({"bits": 8}, "unknown field")):
        with pytest.raises(KwsError, match=match):
            approx_spec(spec)


def test_out_must_be_new_or_empty(tmp_path):
    from kwskit.compress.approx import approximate_run

    run = make_run(tmp_path, "sincconv_gdsconv")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep")
    with pytest.raises(KwsError, match="choose a new or empty folder"):
        approximate_run(run, tmp_path / "full")
    assert (tmp_path / "full" / "x.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    approximate_run(run, tmp_path / "empty")  # an empty folder is fine
    assert (tmp_path / "empty" / "checkpoints" / "best.pt").is_file()


def test_non_sincconv_run_gives_one_clear_error(tmp_path):
    from kwskit.compress.approx import approximate_run

    run = make_run(tmp_path, "dscnn_s")
    with pytest.raises(KwsError, match="dscnn_s: approx: the model has no SincConv1d layer"):
        approximate_run(run, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    with pytest.raises(KwsError, match="no SincConv1d layer"):
        apply_approx(recipe_pipeline("dscnn_s"), {})
