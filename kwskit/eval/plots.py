"""Evaluation plots: confusion matrix heat map, per-keyword FAR/FRR (DET-style) curves of
clips, streaming DET curves (false rejects vs false alarms per hour), accuracy vs cost.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no
global backend change) and written as PNG atomically.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

from kwskit.errors import KwsError
from kwskit.eval.detection import det_envelope
from kwskit.fsutil import atomic_path


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 130) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def plot_confusion(cm, labels: Sequence[str], path: str | os.PathLike, normalize: bool = True,
                   title: str | None = None) -> None:
    """Write a confusion-matrix heat map (rows = true, columns = predicted) as PNG.

    With ``normalize`` the colour is each row's share (recall per cell) and cells show the
    percentage over the count; otherwise colour and text are counts. The title carries the
    overall accuracy (trace / total).
    """
    cm = np.asarray(cm, dtype=np.int64)
    labels = [str(x) for x in labels]
    c = len(labels)
    if cm.shape != (c, c):
        raise KwsError(f"cm: expected a {c}x{c} matrix for {c} labels, got shape {cm.shape}")
    total = int(cm.sum())
    acc = float(np.trace(cm) / total) if total else float("nan")
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    value = share if normalize else cm.astype(np.float64)

    side = min(max(4.5, 0.42 * c + 2.2), 22.0)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(value.max()), 1.0)
    im = ax.imshow(value, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("share of true class" if normalize else "clips")
    if normalize:
        cbar.ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")

    # Cell text: "97%" over "(113)" while it fits, just the percentage (or count) beyond that.
    size = 9 if c <= 8 else 7.5 if c <= 14 else 6
    both = normalize and c <= 14
    for i in range(c):
        for j in range(c):
            if cm[i, j] == 0 and (i != j or rows[i, 0] == 0):
                continue  # empty cells stay blank (bar a 0 % diagonal): errors stand out
            if normalize:
                text = f"{share[i, j]:.0%}" + (f"\n({cm[i, j]})" if both else "")
            else:
                text = str(cm[i, j])
            dark = value[i, j] > 0.55 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize=size, linespacing=1.1,
                    color="white" if dark else "#1a1a1a")

    ax.set_xticks(range(c), labels, rotation=45 if c <= 14 else 90,
                  ha="right" if c <= 14 else "center", rotation_mode="anchor" if c <= 14 else "default",
                  fontsize=max(size, 8))
    ax.set_yticks(range(c), labels, fontsize=max(size, 8))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(np.arange(-0.5, c), minor=True)
    ax.set_yticks(np.arange(-0.5, c), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    head = title or "Confusion matrix"
    ax.set_title(f"{head}: accuracy {acc:.1%} ({np.trace(cm)}/{total} clips)", fontsize=11)
    _save(fig, path)


def plot_far_frr(far_frr: dict, path: str | os.PathLike, title: str | None = None) -> None:
    """Write one FRR-vs-FAR curve per keyword (the ``far_frr`` dict of ``evaluate_scores``).

    FAR is on a log axis when the curves reach below 2 % FAR (points at FAR = 0 cannot be
    drawn there and are dropped), linear otherwise. Each keyword's EER is marked on the
    FAR = FRR diagonal; the legend gives the curve area and EER. Keywords without a curve (no
    positive or negative clips) are listed as such in the legend title.
    """
    curves = {k: v for k, v in far_frr.items() if v.get("curve")}
    skipped = [k for k, v in far_frr.items() if not v.get("curve")]
    fig = Figure(figsize=(7.5, 5.6))
    ax = fig.add_subplot()
    min_pos = min((f for v in curves.values() for f in v["curve"]["far"] if f > 0), default=1.0)
    log_x = min_pos < 0.02  # at least ~2 decades to show, else a log axis has too few ticks
    n = len(curves)
    cmap = _colors(n)
    for (name, v), color in zip(curves.items(), cmap):
        far = np.asarray(v["curve"]["far"], np.float64)
        frr = np.asarray(v["curve"]["frr"], np.float64)
        if log_x:
            keep = far > 0
            far, frr = far[keep], frr[keep]
        label = f"{name}  (area {v['area']:.3f}, EER {v['eer']:.1%})"
        ax.plot(far * 100, frr * 100, color=color, linewidth=1.5, label=label)
        eer = v["eer"]
        if not log_x or eer > 0:
            ax.plot([eer * 100], [eer * 100], marker="o", markersize=5, color=color,
                    markeredgecolor="white", markeredgewidth=0.8, zorder=3)
    lo = max(min_pos * 100 / 1.5, 1e-4) if log_x else 0.0
    diag = np.geomspace(max(lo, 1e-4), 100, 50) if log_x else np.array([0.0, 100.0])
    ax.plot(diag, diag, linestyle=":", color="0.55", linewidth=1, label="FAR = FRR (EER)")
    if log_x:
        ax.set_xscale("log")
        ax.set_xlim(lo, 100)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}")
    else:
        ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("false accepts (% of other clips)" + (", log scale" if log_x else ""))
    ax.set_ylabel("false rejects (% of keyword clips)")
    ax.grid(True, which="major", color="0.88", linewidth=0.8)
    if log_x:
        ax.grid(True, which="minor", color="0.94", linewidth=0.5)
    ax.set_axisbelow(True)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    ax.set_title(title or "False accepts vs false rejects per keyword", fontsize=11)
    if n or skipped:
        legend_title = f"no curve: {', '.join(skipped)}" if skipped else None
        if n <= 12:
            ax.legend(fontsize=7.5, frameon=False, loc="upper right", title=legend_title,
                      title_fontsize=7)
        else:  # many keywords: the legend goes beside the axes so it hides no curve
            ax.legend(fontsize=7, ncol=1 if n <= 26 else 2, frameon=False, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0), title=legend_title, title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no keyword curves", transform=ax.transAxes, ha="center")
    _save(fig, path)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def _light_axes(ax, xlabel: str, ylabel: str) -> None:
    """Labels, a faint grid behind the data, no top/right frame: the look of the stream plots."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="0.92")
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _det_axes(ax, marks: Sequence[float]) -> None:
    """A DET plot's axes: symlog FA/h from 0, FRR in %, the ``marks`` FA/h dotted."""
    for m in marks:
        ax.axvline(m, color="0.5", linestyle=":", linewidth=1)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    # below 0 and above 100: a keyword with no misses (or all missed) stays visible instead
    # of running along the axis itself
    ax.set_ylim(-3, 103)
    ax.set_yticks(range(0, 101, 20))
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}")
    _light_axes(ax, "false alarms per hour (symlog)", "false rejects (% of keyword occurrences)")


def plot_det(result: dict, path: str | os.PathLike, title: str | None = None):
    """DET curves (false-reject rate vs false alarms per hour, symlog x) as PNG, overall in
    black, one coloured line per keyword (each the ``det_envelope`` of its sweep); the 1 FA/h
    line is marked. Returns the saved figure."""
    fig = Figure(figsize=(7.5, 5.4))
    ax = fig.add_subplot()
    kws = [k for k in result["curves"] if k != "overall"]
    for k, color in zip(kws, _colors(len(kws))):
        c = result["curves"][k]
        if result["occurrences"].get(k):
            x, y = det_envelope(c["fa_per_hour"], c["frr"])
            ax.plot(x, 100 * y, color=color, linewidth=1.0, alpha=0.8,
                    label=f"{k} ({result['occurrences'][k]})", drawstyle="steps-post")
    c = result["curves"]["overall"]
    x, y = det_envelope(c["fa_per_hour"], c["frr"])
    ax.plot(x, 100 * y, color="black", linewidth=2.2,
            label=f"overall ({result['occurrences']['overall']})", drawstyle="steps-post")
    _det_axes(ax, (1.0,))
    minutes = result["duration_s"] / 60.0
    ax.set_title(title or f"Streaming DET, {minutes:.0f} min stream", fontsize=11)
    ax.legend(fontsize=7.5, frameon=False, loc="upper right", title="keyword (occurrences)",
              title_fontsize=7.5, ncol=1 if len(kws) <= 12 else 2)
    _save(fig, path)
    return fig


def plot_det_compare(results: dict, path: str | os.PathLike, title: str | None = None,
                     marks: Sequence[float] = (0.5, 1.0, 5.0, 10.0)) -> Figure:
    """Overall DET curves of several sweeps on one plot (e.g. old vs new training on the same
    stream): ``results`` maps a name to a ``sweep`` result; the ``marks`` FA/h are dotted."""
    if not results:
        raise KwsError("plot det: no results to plot")
    # many or long names: a legend inside would cover the curves, so it goes beside them
    many = len(results) > 6 or max(len(str(k)) for k in results) > 45
    fig = Figure(figsize=(11.5 if many else 7.5, 5.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for (name, res), color in zip(results.items(), _colors(len(results))):
        c = res["curves"]["overall"]
        x, y = det_envelope(c["fa_per_hour"], c["frr"])
        ax.plot(x, 100 * y, color=color, linewidth=1.8, drawstyle="steps-post",
                label=f"{name} ({res['occurrences']['overall']})")
    _det_axes(ax, marks)
    minutes = max(r["duration_s"] for r in results.values()) / 60.0
    ax.set_title(title or f"Streaming DET, overall, {minutes:.0f} min stream", fontsize=11)
    # lower left: where DET curves (high FRR at few false alarms) rarely go
    where = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0)) if many else dict(loc="lower left")
    ax.legend(fontsize=7.5, frameon=False, title="run (occurrences)", title_fontsize=7.5, **where)
    if many:
        fig.subplots_adjust(left=0.07, right=0.62)
    _save(fig, path)
    return fig


def plot_pareto(points: Sequence[dict], path: str | os.PathLike, title: str | None = None,
                metric: str = "accuracy") -> Figure:
    """Accuracy against MACs and against parameter bytes (seed 004's Metric-FLOPs and
    Metric-Memory pictures), one labelled marker per model; returns the saved figure.

    ``points``: dicts with ``name``, ``accuracy`` (0-1), ``macs`` and ``param_bytes``.
    ``metric`` names the accuracy on the y axis (which split it was measured on).
    """
    if not points:
        raise KwsError("plot pareto: no runs to plot")
    fig = Figure(figsize=(11, 4.6))
    FigureCanvasAgg(fig)
    colors = _colors(len(points))
    for ax, key, xlabel in ((fig.add_subplot(1, 2, 1), "macs", "MACs per 1-s clip (model, front-end excluded)"),
                            (fig.add_subplot(1, 2, 2), "param_bytes", "parameter bytes (fp32)")):
        for p, c in zip(points, colors):
            ax.scatter(p[key], 100 * p["accuracy"], s=46, color=c, zorder=3)
        # the Pareto front: best accuracy for at most this cost
        front, best = [], -1.0
        for p in sorted(points, key=lambda q: q[key]):
            if p["accuracy"] > best:
                front.append(p)
                best = p["accuracy"]
        if len(front) > 1:  # one point is no front: no line, no legend
            ax.plot([p[key] for p in front], [100 * p["accuracy"] for p in front], "--",
                    color="0.6", zorder=2, label="Pareto front")
            ax.legend(loc="best", fontsize=8)
        ax.set_xscale("log")
        ax.margins(x=0.25, y=0.12)  # room for the labels of the outermost points
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, min(top, 100.0))  # no room above 100% that no model can reach
        values = [p[key] for p in points]
        decades = np.log10(max(values) / max(min(values), 1e-12))
        # 1-2-5 ticks keep narrow ranges labelled; wide ones only need the decades
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades < 2 else (1.0,)))
        ax.xaxis.set_major_formatter(EngFormatter())  # 2 M, 50 k instead of 2 x 10^6
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title or "Accuracy against compute and memory")
    fig.tight_layout()
    for ax, key in zip(fig.axes, ("macs", "param_bytes")):  # after the layout: final positions
        place_labels(ax, [p[key] for p in points], [100 * p["accuracy"] for p in points],
                     [p["name"] for p in points])
    _save(fig, path)
    return fig


# Label positions tried around a point, in points: right/left of it, then further up/down.
_LABEL_OFFSETS = [(5, 4, "left"), (5, -11, "left"), (-5, 4, "right"), (-5, -11, "right"),
                  (5, 14, "left"), (-5, 14, "right"), (5, -21, "left"), (-5, -21, "right"),
                  (5, 24, "left"), (-5, 24, "right")]


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], names: Sequence[str]) -> list:
    """Name every point without labels covering each other or the markers: each label takes
    the first offset that overlaps nothing placed so far (else the least overlapping one).
    Greedy, top point first; enough for the dozen-model plots kwskit draws."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    centres = ax.transData.transform(np.column_stack([xs, ys]))
    taken = [Bbox.from_extents(x - 4, y - 4, x + 4, y + 4) for x, y in centres]  # markers
    texts = []
    for i in sorted(range(len(names)), key=lambda k: -ys[k]):
        best = None
        for dx, dy, ha in _LABEL_OFFSETS:
            t = ax.annotate(names[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy),
                            fontsize=8, ha=ha)
            box = t.get_window_extent(renderer)
            cost = sum(_overlap(box, o) for o in taken)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t, box)
            else:
                t.remove()
            if cost == 0:
                break
        taken.append(best[2])
        texts.append(best[1])
    return texts
