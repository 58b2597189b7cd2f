"""`kwskit plot pareto RUN...`: accuracy against MACs and parameter bytes for trained runs."""

from __future__ import annotations

import json
from pathlib import Path

from kwskit.errors import KwsError


def run_point(run: str | Path) -> dict:
    """Name, best validation accuracy, MACs and parameter bytes of one run directory."""
    from kwskit.eval.info import profile_target

    run = Path(run)
    metrics = run / "metrics.json"
    if not metrics.is_file():
        raise KwsError(f"{run}: not a run directory (no metrics.json)")
    best = json.loads(metrics.read_text()).get("best") or {}
    if best.get("val_acc") is None:
        raise KwsError(f"{metrics}: no validation accuracy recorded")
    prof = profile_target(str(run), latency=False)
    return {"name": run.name, "accuracy": best["val_acc"], "macs": prof["macs"],
            "param_bytes": 4 * prof["params"], "run": str(run)}


def pareto(runs: list[str], out: str | Path) -> list[dict]:
    from kwskit.eval.plots import plot_pareto

    points = [run_point(r) for r in runs]
    plot_pareto(points, out, title=f"Accuracy against compute and memory ({len(points)} runs)",
                metric="best validation accuracy")
    return points
