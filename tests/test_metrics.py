"""Metrics and plots: hand-computed classification numbers, FAR/FRR sweep properties, PNG output."""

import json

import numpy as np
import pytest

from kwskit.errors import KwsError
from kwskit.data.streams import Occurrence
from kwskit.eval.detection import score_detections
from kwskit.eval.metrics import curve_area, equal_error_rate, evaluate_scores, far_frr_curve
from kwskit.eval.plots import plot_confusion, plot_far_frr
from kwskit.stream.detector import Detection

LABELS = ["_silence_", "yes", "no"]
# (true, predicted) for 9 clips; confusion rows = true: [[1,1,0],[0,2,1],[0,1,3]]
PAIRS = [(0, 0), (0, 1), (1, 1), (1, 1), (1, 2), (2, 2), (2, 2), (2, 1), (2, 2)]


def _probs(pairs, c=3):
    """Probabilities whose arg-max is the wanted prediction (0.6 there, 0.2 elsewhere)."""
    p = np.full((len(pairs), c), 0.4 / (c - 1))
    for i, (_, pred) in enumerate(pairs):
        p[i, pred] = 0.6
    return p, np.array([t for t, _ in pairs])


def test_hand_computed_three_class():
    scores, targets = _probs(PAIRS)
    r = evaluate_scores(scores, targets, LABELS)
    assert r["n"] == 9
    assert r["accuracy"] == pytest.approx(6 / 9)
    assert r["confusion"] == [[1, 1, 0], [0, 2, 1], [0, 1, 3]]
    pc = r["per_class"]
    # precision = diag / column sum (1, 4, 4); recall = diag / row sum (2, 3, 4)
    assert pc["_silence_"]["precision"] == pytest.approx(1.0)
    assert pc["_silence_"]["recall"] == pytest.approx(0.5)
    assert pc["_silence_"]["f1"] == pytest.approx(2 / 3)
    assert pc["yes"]["precision"] == pytest.approx(0.5)
    assert pc["yes"]["recall"] == pytest.approx(2 / 3)
    assert pc["yes"]["f1"] == pytest.approx(4 / 7)
    assert pc["no"]["precision"] == pytest.approx(0.75)
    assert pc["no"]["recall"] == pytest.approx(0.75)
    assert [pc[k]["support"] for k in LABELS] == [2, 3, 4]
    assert r["macro_f1"] == pytest.approx((2 / 3 + 4 / 7 + 0.75) / 3)
    assert r["weighted_f1"] == pytest.approx((2 * 2 / 3 + 3 * 4 / 7 + 4 * 0.75) / 9)
    # keywords only: no curve for _silence_
    assert set(r["far_frr"]) == {"yes", "no"}
    json.dumps(r, allow_nan=False)


def test_logits_flag_matches_probabilities():
    scores, targets = _probs(PAIRS)
    logits = np.log(scores) + 3.7  # softmax undoes the log and the shift
    a = evaluate_scores(scores, targets, LABELS)
    b = evaluate_scores(logits, targets, LABELS, logits=True)
    assert a["confusion"] == b["confusion"]
    assert a["far_frr"]["yes"]["area"] == pytest.approx(b["far_frr"]["yes"]["area"])
    with pytest.raises(KwsError, match="logits=True"):
        evaluate_scores(logits, targets, LABELS)


def test_class_without_support_gives_nulls():
    labels = ["yes", "no", "up"]
    scores, targets = _probs([(0, 0), (0, 1), (1, 1), (1, 0)])  # "up": never true, never predicted
    r = evaluate_scores(scores, targets, labels)
    up = r["per_class"]["up"]
    assert up == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert r["far_frr"]["up"]["area"] is None and r["far_frr"]["up"]["curve"] is None
    assert r["macro_f1"] == pytest.approx(0.5)  # mean over yes and no only
    text = json.dumps(r, allow_nan=False)
    assert "NaN" not in text


def test_single_class():
    r = evaluate_scores(np.ones((4, 1)), np.zeros(4, int), ["yes"])
    assert r["accuracy"] == 1.0
    assert r["per_class"]["yes"]["f1"] == 1.0
    assert r["far_frr"]["yes"]["negatives"] == 0 and r["far_frr"]["yes"]["eer"] is None


@pytest.mark.parametrize("scores,targets,labels,match", [
    (np.zeros((0, 3)), np.zeros(0, int), LABELS, "empty"),
    (np.full((2, 3), 1 / 3), np.array([0, 3]), LABELS, "out of range"),
    (np.full((2, 3), 1 / 3), np.array([0, 1]), ["a", "b"], "labels"),
    (np.full((2, 3), 1 / 3), np.array([0]), LABELS, "targets"),
    (np.full(3, 1 / 3), np.array([0]), LABELS, "scores"),
    (np.array([[np.nan, 0.5, 0.5]]), np.array([0]), LABELS, "NaN"),
])
def test_bad_input_raises(scores, targets, labels, match):
    with pytest.raises(KwsError, match=match):
        evaluate_scores(scores, targets, labels)


def test_far_frr_hand_example():
    # thresholds inf .9 .8 .7 .5 .4 -> FAR 0 0 .5 1 1 1, FRR 1 2/3 2/3 2/3 1/3 0
    far, frr, thr = far_frr_curve(np.array([0.9, 0.5, 0.4]), np.array([0.8, 0.7]))
    np.testing.assert_allclose(far, [0, 0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(frr, [1, 2 / 3, 2 / 3, 2 / 3, 1 / 3, 0])
    eer, t = equal_error_rate(far, frr, thr)
    # FAR-FRR crosses 0 between thresholds .8 (-1/6) and .7 (+1/3): a third of the way
    assert eer == pytest.approx(2 / 3)
    assert t == pytest.approx(0.7)
    # area: FRR 2/3 over FAR [0, .5] then 2/3 over [.5, 1] (vertical drops add nothing)
    assert curve_area(far, frr) == pytest.approx(2 / 3)


def _auc_pairs(pos, neg):
    """ROC AUC by counting pairs (ties count half): 1 - area must match it."""
    d = pos[:, None] - neg[None, :]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def test_far_frr_properties_random_and_ties():
    rng = np.random.default_rng(0)
    n, c = 3000, 4
    targets = rng.integers(0, c, n)
    scores = rng.dirichlet(np.ones(c), n).round(2)  # rounding makes plenty of ties
    r = evaluate_scores(scores, targets, ["_unknown_", "a", "b", "c"])
    for k, name in enumerate(["a", "b", "c"]):
        v = r["far_frr"][name]
        far, frr = np.array(v["curve"]["far"]), np.array(v["curve"]["frr"])
        assert len(far) <= 200
        assert np.all(np.diff(far) >= 0) and np.all(np.diff(frr) <= 0)
        assert (far[0], frr[0]) == (0.0, 1.0) and (far[-1], frr[-1]) == (1.0, 0.0)
        assert 0.0 <= v["area"] <= 1.0
        assert v["area"] == pytest.approx(0.5, abs=0.04)  # scores carry no information
        assert v["eer"] == pytest.approx(0.5, abs=0.04)
        pos, neg = scores[targets == k + 1, k + 1], scores[targets != k + 1, k + 1]
        assert v["area"] == pytest.approx(1 - _auc_pairs(pos, neg), abs=1e-9)
        assert v["positives"] == len(pos) and v["negatives"] == len(neg)


def test_perfect_separation_area_and_eer_zero():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 3, 500)
    scores = np.full((500, 3), 0.05)
    scores[np.arange(500), targets] = 0.9 + 0.05 * rng.random(500)
    r = evaluate_scores(scores / scores.sum(1, keepdims=True), targets, ["_silence_", "on", "off"])
    assert r["accuracy"] == 1.0
    for name in ("on", "off"):
        assert r["far_frr"][name]["area"] == 0.0
        assert r["far_frr"][name]["eer"] == 0.0


def test_detection_scoring_on_long_audio():
    """The one detection rule (kwskit.eval.detection): hits, misses, FA per hour."""
    def det(*starts):
        return [Detection("on", t, t + 0.1, 0.9) for t in starts]

    words = [Occurrence("on", t, t) for t in (1.0, 5.0, 10.0)]
    r = score_detections(det(1.2, 4.0, 5.1, 20.0), words, ["on"], duration_s=1800,
                         tolerance_s=0.5)["on"]
    assert (r["hits"], r["misses"], r["false_alarms"]) == (2, 1, 2)
    assert r["frr"] == pytest.approx(1 / 3)
    assert r["fa_per_hour"] == pytest.approx(4.0)
    # one detection cannot serve two occurrences, even when it lies in both windows
    r = score_detections(det(1.2), [Occurrence("on", 1.0, 1.0), Occurrence("on", 1.1, 1.4)],
                         ["on"], duration_s=60)["on"]
    assert (r["hits"], r["misses"], r["false_alarms"]) == (1, 1, 0)
    with pytest.raises(KwsError, match="duration_s"):
        score_detections([], [], ["on"], duration_s=0)


def _png_ok(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_plots_write_png_and_no_temp_files(tmp_path):
    rng = np.random.default_rng(2)
    labels = ["_silence_", "_unknown_", "yes", "no", "up"]
    targets = rng.integers(0, 4, 400)  # "up" has no clips: listed as having no curve
    logits = rng.normal(size=(400, 5))
    logits[np.arange(400), targets] += 2.5
    r = evaluate_scores(logits, targets, labels, logits=True)
    out = tmp_path / "plots"
    plot_confusion(r["confusion"], labels, out / "confusion.png")
    plot_confusion(r["confusion"], labels, out / "counts.png", normalize=False)
    plot_far_frr(r["far_frr"], out / "far_frr.png")
    # linear FAR axis when every curve has few negatives
    tiny = evaluate_scores(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), [0, 1, 1], ["a", "b"])
    plot_far_frr(tiny["far_frr"], out / "tiny.png")
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "counts.png", "far_frr.png",
                                                     "tiny.png"]
    for p in out.iterdir():
        _png_ok(p)


def test_plot_bad_matrix_leaves_nothing(tmp_path):
    with pytest.raises(KwsError, match="cm"):
        plot_confusion([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "cm.png")
    assert list(tmp_path.iterdir()) == []


def test_pareto_labels_of_crowded_points_do_not_overlap():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from kwskit.eval.plots import _overlap, place_labels

    fig = Figure(figsize=(5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs, ys = [1e6, 1.05e6, 1.1e6, 1.15e6, 5e7], [93.5, 93.6, 93.4, 93.55, 80.0]  # a tight cluster
    ax.scatter(xs, ys)
    ax.set_xscale("log")
    texts = place_labels(ax, xs, ys, ["tcresnet8", "matchboxnet_3x1x64", "sincconv_gdsconv",
                                      "bcresnet3", "res15"])
    boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in texts]
    assert len(boxes) == 5
    assert all(_overlap(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # the naive placement (every label up-right of its point) does overlap here
    naive = [ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
             .get_window_extent(fig.canvas.get_renderer()) for n, x, y in zip("abcd", xs, ys)]
    assert any(_overlap(a, b) > 0 for i, a in enumerate(naive) for b in naive[i + 1:])


def test_pareto_plot_says_which_accuracy_and_stops_at_100(tmp_path):
    from kwskit.eval.plots import plot_pareto

    one = [{"name": "a", "accuracy": 0.995, "macs": 2e6, "param_bytes": 4e4}]
    fig = plot_pareto(one, tmp_path / "one.png", metric="best validation accuracy")
    for ax in fig.axes:
        assert ax.get_ylabel() == "best validation accuracy (%)"
        assert ax.get_ylim()[1] <= 100.0
        assert ax.get_legend() is None and not ax.get_lines()  # one run: no "front"
    two = one + [{"name": "b", "accuracy": 0.90, "macs": 1e6, "param_bytes": 2e4}]
    fig = plot_pareto(two, tmp_path / "two.png")
    assert all(ax.get_legend() is not None and len(ax.get_lines()) == 1 for ax in fig.axes)


def test_det_plot_shows_a_keyword_with_no_misses(tmp_path):
    from kwskit.eval.plots import plot_det

    thr = [0.1, 0.5, 0.9]
    curve = lambda fa, frr: {"fa_per_hour": fa, "frr": frr}  # noqa: E731
    result = {"curves": {"yes": curve([4.0, 1.0, 0.0], [0.0, 0.0, 0.0]),
                         "no": curve([3.0, 1.0, 0.0], [0.1, 0.3, 0.6]),
                         "overall": curve([7.0, 2.0, 0.0], [0.05, 0.15, 0.3])},
              "occurrences": {"yes": 10, "no": 10, "overall": 20}, "duration_s": 3600.0,
              "thresholds": thr}
    ax = plot_det(result, tmp_path / "det.png").axes[0]
    yes = [ln for ln in ax.get_lines() if ln.get_label().startswith("yes")][0]
    assert max(yes.get_ydata()) == 0.0
    assert ax.get_ylim()[0] < 0.0  # the 0% line lies above the x axis, not on it
    assert (tmp_path / "det.png").stat().st_size > 5000
