"""Classification metrics for keyword spotting, in plain numpy (no sklearn).

``evaluate_scores`` turns per-clip class scores into one JSON-able report: accuracy, per-class
precision / recall / F1, the confusion matrix, and for every keyword a one-vs-rest false-accept /
false-reject sweep with its area and equal error rate. Detectors on long audio are scored by
kwskit.eval.detection (hits, misses, false alarms per hour).

Every number in the returned dicts is a plain ``int`` / ``float`` or ``None`` (never NaN), so
``json.dumps`` writes it as-is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kwskit.errors import KwsError

# Labels that are classes but not keywords: no FAR/FRR curve is computed for them.
NON_KEYWORD_LABELS = frozenset({"_silence_", "_unknown_"})

MAX_CURVE_POINTS = 200  # curve points kept in the JSON report (area / EER use the full curve)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (subtracts the row maximum first)."""
    z = logits - np.max(logits, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on GPU or requiring grad
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_arrays(scores, targets, labels, logits: bool):
    scores = _to_numpy(scores).astype(np.float64)
    targets = _to_numpy(targets)
    labels = [str(x) for x in labels]
    if scores.ndim != 2:
        raise KwsError(f"scores: expected a (clips, classes) array, got shape {scores.shape}")
    n, c = scores.shape
    if n == 0:
        raise KwsError("scores: no clips to evaluate (empty input)")
    if c != len(labels):
        raise KwsError(f"labels: {len(labels)} names given but scores have {c} classes")
    if len(set(labels)) != len(labels):
        raise KwsError("labels: duplicate label names")
    if targets.shape != (n,):
        raise KwsError(f"targets: expected shape ({n},), got {targets.shape}")
    if not np.issubdtype(targets.dtype, np.integer):
        if not np.all(np.equal(np.mod(targets, 1), 0)):
            raise KwsError("targets: expected integer class indices")
        targets = targets.astype(np.int64)
    if targets.min() < 0 or targets.max() >= c:
        raise KwsError(f"targets: class index out of range [0, {c - 1}]")
    if not np.all(np.isfinite(scores)):
        raise KwsError("scores: contain NaN or infinite values")
    if logits:
        scores = softmax(scores, axis=1)
    elif scores.min() < -1e-6 or scores.max() > 1 + 1e-6:
        raise KwsError("scores: values outside [0, 1]; pass logits=True for raw model outputs")
    return scores, targets.astype(np.int64), labels


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows are true classes, columns are predicted classes."""
    idx = np.asarray(targets, np.int64) * num_classes + np.asarray(predictions, np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def per_class_metrics(cm: np.ndarray, labels: Sequence[str]) -> dict:
    """Precision, recall, F1 and support per class from a confusion matrix.

    precision is ``None`` when the class was never predicted, recall is ``None`` when it has no
    clips (support 0). F1 treats an undefined precision or recall as 0, and is ``None`` only
    when the class is neither present nor predicted (nothing to measure).
    """
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    out = {}
    for i, name in enumerate(labels):
        p = _ratio(tp[i], predicted[i])
        r = _ratio(tp[i], support[i])
        if p is None and r is None:
            f1 = None
        else:
            pp, rr = p or 0.0, r or 0.0
            f1 = 2 * pp * rr / (pp + rr) if pp + rr > 0 else 0.0
        out[name] = {"precision": p, "recall": r, "f1": f1, "support": int(support[i])}
    return out


def far_frr_curve(pos_scores: np.ndarray, neg_scores: np.ndarray):
    """One-vs-rest threshold sweep.

    For each threshold t (every distinct score, plus +inf first): FAR(t) = share of negative
    clips with score >= t, FRR(t) = share of positive clips with score < t. Thresholds run from
    high to low, so FAR rises from 0 to 1 and FRR falls from 1 to 0.

    Returns (far, frr, thresholds) as float64 arrays; thresholds[0] is +inf (reject all).
    """
    pos = np.sort(np.asarray(pos_scores, np.float64))
    neg = np.sort(np.asarray(neg_scores, np.float64))
    thr = np.unique(np.concatenate([pos, neg]))[::-1]
    thr = np.concatenate([[np.inf], thr])
    # searchsorted 'left' counts elements strictly below t.
    far = (len(neg) - np.searchsorted(neg, thr, side="left")) / len(neg)
    frr = np.searchsorted(pos, thr, side="left") / len(pos)
    return far, frr, thr


def curve_area(far: np.ndarray, frr: np.ndarray) -> float:
    """Area under the FAR-FRR curve: the trapezoid integral of FRR over FAR in [0, 1].

    Points are sorted by FAR (ties by FRR, high first) before integrating. 0 means perfect
    separation, 0.5 chance; it equals 1 - ROC AUC.
    """
    order = np.lexsort((-frr, far))
    x, y = far[order], frr[order]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def equal_error_rate(far: np.ndarray, frr: np.ndarray, thr: np.ndarray):
    """EER by linear interpolation where FAR - FRR crosses 0 (both share a threshold order).

    Returns (eer, threshold) where threshold is the highest one whose FAR >= FRR (``None`` if
    that is the +inf reject-all point).
    """
    d = far - frr  # non-decreasing from -1 to +1
    i = int(np.argmax(d >= 0))
    if d[i] == 0 or i == 0:
        eer = float((far[i] + frr[i]) / 2)
    else:
        a = -d[i - 1] / (d[i] - d[i - 1])
        eer = float(far[i - 1] + a * (far[i] - far[i - 1]))
    t = float(thr[i]) if np.isfinite(thr[i]) else None
    return eer, t


def _downsample_indices(far: np.ndarray, keep: Sequence[int], max_points: int) -> np.ndarray:
    """Pick <= max_points indices: half evenly along the curve, half evenly in log FAR (so a
    log-scaled plot keeps its low-FAR detail), plus the ends and ``keep``."""
    n = len(far)
    if n <= max_points:
        return np.arange(n)
    budget = (max_points - 2 - len(keep)) // 2
    even = np.round(np.linspace(0, n - 1, budget)).astype(np.int64)
    pos = far[far > 0]
    logs = np.empty(0, np.int64)
    if len(pos):
        targets = np.geomspace(pos.min(), 1.0, budget)
        logs = np.minimum(np.searchsorted(far, targets, side="left"), n - 1)
    idx = np.unique(np.concatenate([[0, n - 1], even, logs, np.asarray(keep, np.int64)]))
    return idx[:max_points]


def keyword_far_frr(scores: np.ndarray, targets: np.ndarray, k: int,
                    max_points: int = MAX_CURVE_POINTS) -> dict:
    """FAR/FRR sweep of class ``k``'s probability, one keyword vs the rest (see far_frr_curve)."""
    is_pos = targets == k
    n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
    out = {"positives": n_pos, "negatives": n_neg, "area": None, "eer": None,
           "eer_threshold": None, "curve": None}
    if n_pos == 0 or n_neg == 0:
        return out  # no sweep without both kinds of clips
    far, frr, thr = far_frr_curve(scores[is_pos, k], scores[~is_pos, k])
    eer, eer_t = equal_error_rate(far, frr, thr)
    i = int(np.argmax(far - frr >= 0))
    idx = _downsample_indices(far, [max(i - 1, 0), i], max_points)
    out.update(area=curve_area(far, frr), eer=eer, eer_threshold=eer_t, curve={
        "far": [float(v) for v in far[idx]],
        "frr": [float(v) for v in frr[idx]],
        # null = +inf, the reject-everything point
        "threshold": [float(v) if np.isfinite(v) else None for v in thr[idx]],
    })
    return out


def evaluate_scores(scores, targets, labels: Sequence[str], logits: bool = False,
                    max_curve_points: int = MAX_CURVE_POINTS) -> dict:
    """Score a classifier on N clips.

    Args:
        scores: (N, C) class probabilities (rows sum to 1), or raw logits with ``logits=True``.
        targets: (N,) true class indices in [0, C).
        labels: the C class names, in score-column order.
        logits: apply a softmax to ``scores`` first.
        max_curve_points: cap on FAR/FRR points stored per keyword.

    Returns a JSON-able dict:
        n, accuracy (share of clips whose arg-max is the target), labels,
        per_class {label: {precision, recall, f1, support}} (see per_class_metrics),
        macro_f1 (mean F1 over classes with support > 0), weighted_f1 (support-weighted),
        confusion (C x C list of lists, rows = true, cols = predicted),
        far_frr {keyword: {positives, negatives, area, eer, eer_threshold,
                           curve {far, frr, threshold}}} for every label except
        ``_silence_`` / ``_unknown_``. FAR = share of other-class clips whose keyword
        probability >= t; FRR = share of that keyword's clips below t. ``area`` integrates FRR
        over FAR in [0, 1] with the trapezoid rule after sorting by FAR (lower is better;
        0 = perfect, 0.5 = chance). ``eer`` is the interpolated rate where FAR = FRR. Both use
        the full sweep; ``curve`` is down-sampled. A keyword without positive or negative clips
        gets nulls.
    """
    scores, targets, labels = _as_arrays(scores, targets, labels, logits)
    n, c = scores.shape
    pred = np.argmax(scores, axis=1)
    cm = confusion_matrix(targets, pred, c)
    per_class = per_class_metrics(cm, labels)
    present = [m for m in per_class.values() if m["support"] > 0]
    f1s = np.array([m["f1"] for m in present], np.float64)
    sup = np.array([m["support"] for m in present], np.float64)
    report = {
        "n": int(n),
        "accuracy": float(np.mean(pred == targets)),
        "labels": labels,
        "per_class": per_class,
        "macro_f1": float(f1s.mean()),
        "weighted_f1": float(np.sum(f1s * sup) / sup.sum()),
        "confusion": cm.tolist(),
        "far_frr": {},
    }
    for k, name in enumerate(labels):
        if name not in NON_KEYWORD_LABELS:
            report["far_frr"][name] = keyword_far_frr(scores, targets, k, max_curve_points)
    return report
