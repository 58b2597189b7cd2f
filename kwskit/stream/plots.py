"""The streaming picture: keyword probabilities over time with the detections marked.

Top panel: the recording's peak level per block (where the speech is). Bottom panel: the
probability of each keyword over time (the most active ones, up to ``max_keywords``), the
threshold, and every detection as a shaded span labelled with its keyword. Long recordings
are thinned to about ``max_points`` points per line by keeping each bucket's maximum, so
short peaks stay visible. Written with matplotlib's Agg canvas, atomically.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from kwskit.stream.detector import DEFAULT_IGNORE, Detection


def _thin(t: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket maxima so a line keeps at most ~max_points points (peaks survive)."""
    n = len(t)
    if n <= max_points:
        return t, y
    k = int(np.ceil(n / max_points))
    m = n // k
    tt = t[: m * k].reshape(m, k)[:, 0]
    yy = y[: m * k].reshape(m, k, *y.shape[1:]).max(axis=1)
    return tt, yy


def plot_stream(scores: np.ndarray, times: np.ndarray, labels: Sequence[str],
                detections: Sequence[Detection], path: str | os.PathLike,
                threshold: float | dict = 0.5, envelope: np.ndarray | None = None,
                title: str | None = None, max_keywords: int = 8,
                max_points: int = 8000) -> None:
    """Write the probability-over-time PNG (see module doc).

    Args:
        scores: (frames, classes) probabilities; times: (frames,) seconds.
        labels: class names; ``_silence_``/``_unknown_`` are not drawn.
        detections: spans to mark.
        threshold: the detector's threshold(s), drawn as dashed lines.
        envelope: (blocks, 2) block end time [s] and peak |sample| (``StreamResult``).
    """
    from matplotlib.figure import Figure

    from kwskit.eval.plots import _colors, _light_axes, _save

    scores = np.asarray(scores, np.float32)
    times = np.asarray(times, np.float64)
    kw = [i for i, lab in enumerate(labels) if lab not in DEFAULT_IGNORE]
    detected = {d.keyword for d in detections}
    # keywords that fired first, then by peak probability
    order = sorted(kw, key=lambda i: (labels[i] not in detected,
                                      -float(scores[:, i].max()) if len(scores) else 0.0))
    shown = order[:max_keywords]
    colors = dict(zip(shown, _colors(max(len(shown), 1))))

    fig = Figure(figsize=(11, 5.2))
    gs = fig.add_gridspec(2, 1, height_ratios=(1, 3), hspace=0.08)
    ax_env = fig.add_subplot(gs[0])
    ax = fig.add_subplot(gs[1], sharex=ax_env)
    if envelope is not None and len(envelope):
        et, ev = _thin(envelope[:, 0].astype(np.float64), envelope[:, 1], max_points)
        ax_env.fill_between(et, -ev, ev, step="pre", color="0.55", linewidth=0)
        lim = max(float(ev.max()), 1e-3)
        ax_env.set_ylim(-lim * 1.05, lim * 1.05)
    ax_env.set_ylabel("level", fontsize=8)
    ax_env.tick_params(labelbottom=False, labelsize=7)
    for s in ("top", "right"):
        ax_env.spines[s].set_visible(False)

    t_thin, s_thin = _thin(times, scores, max_points)
    for i in shown:
        ax.plot(t_thin, s_thin[:, i], color=colors[i], linewidth=1.1, label=labels[i])
    thr = threshold if isinstance(threshold, dict) else {labels[i]: threshold for i in shown}
    levels = sorted({float(thr.get(labels[i], 0.5)) for i in shown}) or [0.5]
    for lv in levels:
        ax.axhline(lv, color="0.35", linestyle="--", linewidth=0.8)
    index = {lab: i for i, lab in enumerate(labels)}
    for d in detections:
        c = colors.get(index.get(d.keyword), "0.3")
        right = d.end if d.end > d.start else d.start + 0.02
        for a in (ax, ax_env):
            a.axvspan(d.start, right, color=c, alpha=0.18, linewidth=0)
        ax.text(d.start, 1.02, d.keyword, color=c, fontsize=7.5, rotation=0,
                ha="left", va="bottom", transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_ylim(0, 1.0)
    if len(times):
        ax.set_xlim(0, float(times[-1]))
    _light_axes(ax, "time (s)", "keyword probability")
    if shown:
        ax.legend(fontsize=7.5, frameon=False, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    n = len(detections)
    ax_env.set_title(title or f"{n} detection{'s' if n != 1 else ''}", fontsize=10)
    _save(fig, path)
