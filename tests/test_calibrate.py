"""Calibration: per-keyword thresholds that keep a false-alarm budget on the stream they were
fitted on, kept in the run and used by ``kwskit stream`` (PyTorch and ONNX) by default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from kwskit.data.streams import Occurrence
from kwskit.errors import KwsError
from kwskit.eval.detection import default_thresholds, fit_thresholds, sweep
from kwskit.stream.detector import Detector

pytestmark = pytest.mark.usefixtures("one_thread")
LABELS = ["yes", "no", "_silence_", "_unknown_"]
STEP = 0.01


def synthetic_scores(seconds: float = 600.0, seed: int = 0):
    """Score tracks with a bump at every spoken keyword (heights 0.55-0.95) and decoy bumps
    of the same keyword elsewhere (heights 0.3-0.8): no threshold is perfect."""
    rng = np.random.default_rng(seed)
    times = np.arange(0.0, seconds, STEP)
    scores = np.zeros((len(times), len(LABELS)))
    occ = []

    def bump(k: int, t0: float, h: float):
        i = int(t0 / STEP)
        scores[i:i + 30, k] = np.maximum(scores[i:i + 30, k], h)

    for t in np.arange(2.0, seconds - 3, 6.0):
        k = int(rng.integers(2))
        occ.append(Occurrence(LABELS[k], float(t), float(t) + 0.5))
        bump(k, t + 0.3, rng.uniform(0.55, 0.95))
        bump(int(rng.integers(2)), t + 3.5, rng.uniform(0.3, 0.8))  # a decoy between words
    scores[:, 2] = 1.0 - scores[:, :2].sum(1).clip(0, 1)
    return scores, times, occ, seconds


def test_thresholds_keep_the_budget_and_are_the_lowest_that_do():
    scores, times, occ, dur = synthetic_scores()
    cal = fit_thresholds(scores, times, LABELS, occ, dur, target_fa_per_hour=12.0,
                         smoothing_grid=(0.05, 0.1))
    res = cal["result"]
    assert res["overall"]["fa_per_hour"] <= 12.0 + 1e-9  # the target, on the fitted data
    assert 0 < res["overall"]["frr"] < 1 and cal["over_budget"] == []
    # each keyword's share is 6 FA/h; the next lower threshold would break it
    curves = sweep(scores, times, LABELS, occ, dur, smoothing_s=cal["smoothing_s"])
    grid = list(curves["thresholds"])
    for k, t in cal["thresholds"].items():
        i = grid.index(t)
        assert curves["curves"][k]["fa_per_hour"][i] <= 6.0 + 1e-9
        assert i == 0 or curves["curves"][k]["fa_per_hour"][i - 1] > 6.0
    # the detector with those settings reproduces the reported numbers
    det = Detector(LABELS, threshold=cal["thresholds"], smoothing_s=cal["smoothing_s"]).detect(
        scores, times)
    assert len([d for d in det]) == res["overall"]["hits"] + res["overall"]["false_alarms"]
    # a looser budget never costs misses
    loose = fit_thresholds(scores, times, LABELS, occ, dur, target_fa_per_hour=60.0,
                           smoothing_grid=(0.05, 0.1))
    assert loose["result"]["overall"]["misses"] <= res["overall"]["misses"]
    with pytest.raises(KwsError, match="target-fa-per-hour"):
        fit_thresholds(scores, times, LABELS, occ, dur, target_fa_per_hour=0)


def test_a_keyword_that_always_fires_is_reported_over_budget():
    scores, times, occ, dur = synthetic_scores(120.0)
    scores[::500, 1] = 1.0  # "no" fires every 5 s whatever the threshold
    cal = fit_thresholds(scores, times, LABELS, occ, dur, target_fa_per_hour=1.0,
                         smoothing_grid=(0.0,))
    assert cal["over_budget"] == ["no"] and cal["thresholds"]["no"] == default_thresholds()[-1]


def test_calibrate_command_and_stream_defaults(tiny_data, tmp_path, capsys):
    from kwskit.cli import main
    from test_eval_stream import make_run

    run = make_run(tmp_path, data=tiny_data)
    assert main(["calibrate", str(run), "--minutes", "0.5", "--split", "validation",
                 "--target-fa-per-hour", "30"]) == 0
    out = capsys.readouterr().out
    assert "calibrated for 30 false alarm(s) per hour" in out
    cal = json.loads((run / "calibration.json").read_text())
    assert set(cal["thresholds"]) == {"yes", "no"} and cal["fitted_on"]["split"] == "validation"
    assert cal["result"]["overall"]["fa_per_hour"] <= 30.0 + 1e-9 or cal["over_budget"]

    sf.write(str(tmp_path / "a.wav"), np.zeros(16000 * 2, np.float32), 16000)
    assert main(["stream", str(run), str(tmp_path / "a.wav"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["calibrated"] and got["threshold"] == {**cal["thresholds"], "_silence_": 0.5,
                                                      "_unknown_": 0.5}
    assert main(["stream", str(run), str(tmp_path / "a.wav"), "--json", "--threshold", "0.3"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert not got["calibrated"] and got["threshold"] == 0.3

    pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript")
    assert main(["export", str(run), "--stream"]) == 0
    onnx_path = run / "export" / "dscnn_s-stream.onnx"
    from kwskit.runtime import read_card

    assert read_card(onnx_path)["calibration"]["thresholds"] == cal["thresholds"]
    capsys.readouterr()
    assert main(["stream", str(onnx_path), str(tmp_path / "a.wav"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibrated"]

    (run / "calibration.json").write_text("{not json")
    assert main(["stream", str(run), str(tmp_path / "a.wav")]) == 2
    assert "not a kwskit calibration" in capsys.readouterr().err
