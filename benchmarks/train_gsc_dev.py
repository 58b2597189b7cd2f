"""Train recipes on real speech (../shared/data/gsc-dev, mini10) and write the results table.

    python benchmarks/train_gsc_dev.py                       # DS-CNN-S, BC-ResNet-1, BC-ResNet-3
    python benchmarks/train_gsc_dev.py configs/bcresnet1.yaml --epochs 15 --batch-size 100

`--epochs E` is a CPU budget: the recipe's schedule is compressed into E epochs (warm-up and step
lengths scaled by E / recipe epochs), so every recipe still warms up, decays and ends at its final
learning rate. `--batch-size` gives every recipe the same number of optimiser steps per epoch.

For each recipe: train (validation each epoch), profile (params, MACs, latency), then append or
replace its row in benchmarks/results/gsc_dev.json and rewrite the table in README.md between
the `gsc-dev-results` markers. A recipe trained for fewer epochs than it asks for says so.
Several of these processes may run side by side (each re-reads the results file before writing).
Latency measured while other jobs load the machine is pessimistic: `--reprofile` re-measures
every saved run afterwards, on a quiet machine, without training.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kwskit.config import budget_overrides, load_config  # noqa: E402
from kwskit.fsutil import replace_between, write_json  # noqa: E402

DEFAULT_RECIPES = ["configs/dscnn_s.yaml", "configs/bcresnet1.yaml", "configs/bcresnet3.yaml"]
RESULTS = ROOT / "benchmarks" / "results" / "gsc_dev.json"
START, END = "<!-- gsc-dev-results:start -->", "<!-- gsc-dev-results:end -->"


def train_one(recipe: str, data: str, out_root: Path, epochs: int | None, batch_size: int | None,
              extra: list[str]) -> dict:
    from kwskit.train.loop import fit

    recipe_cfg = load_config(ROOT / recipe)
    overrides = ["data.labels=mini10", *budget_overrides(recipe_cfg, epochs, batch_size), *extra]
    cfg = load_config(ROOT / recipe, overrides)
    asked = recipe_cfg.train.epochs
    out = out_root / Path(recipe).stem
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t0 = time.time()
    result = fit(cfg, out, data=data, track=False)
    wall = time.time() - t0
    hist = result["history"]
    return {
        "recipe": recipe, "model": cfg.model.name, "val_acc": result["best"]["val_acc"],
        "best_epoch": result["best"]["epoch"], "epochs": len(hist), "recipe_epochs": asked,
        "batch_size": cfg.train.batch_size, "recipe_batch_size": recipe_cfg.train.batch_size,
        **profile_row(out), "wall_s": round(wall, 1),
        "clips_per_s": round(sum(h["clips_per_s"] for h in hist) / len(hist), 1),
        "epoch_s": round(sum(h["seconds"] for h in hist) / len(hist), 1),
        "date": time.strftime("%Y-%m-%d"),
    }


def profile_row(run: Path) -> dict:
    """Params, MACs and batch-1 one-thread latency of a trained run."""
    from kwskit.eval.info import profile_target

    prof = profile_target(str(run))
    return {"params": prof["params"], "macs": prof["macs"],
            "macs_with_frontend": prof.get("macs_with_frontend"), "latency_ms": prof.get("latency_ms")}


def paper_figures(model: str) -> str:
    """The model's published params / MACs / GSC accuracy, with the source's arXiv id."""
    from kwskit.models import model_info

    pub = model_info(model).get("published") or {}
    params = f"{pub['params'] / 1e3:.0f} K" if pub.get("params") else "-"
    macs = f"{pub['macs'] / 1e6:.1f} M" if pub.get("macs") else "-"
    accs = [f"{v}% {k[4:].replace('_', '-')}" for k, v in pub.items() if k.startswith("acc_") and v]
    found = re.search(r"arXiv:\d{4}\.\d{4,5}", pub.get("source", ""))
    source = found.group(0) if found else ""
    return f"{params} / {macs} / {', '.join(accs) or '-'} {source}".strip()


def render_table(rows: list[dict]) -> str:
    head = ("| recipe | model | val acc (mini10) | params | MACs (model / +front-end) | latency ms | "
            "epochs | batch | s/epoch | train clips/s | wall | paper: params / MACs / GSC acc |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in sorted(rows, key=lambda r: -r["val_acc"]):  # best first
        ep = f"{r['epochs']}" + ("" if r["epochs"] >= r["recipe_epochs"] else f" of {r['recipe_epochs']} (CPU budget)")
        bs = r.get("batch_size", "-")
        if r.get("recipe_batch_size") not in (None, bs):
            bs = f"{bs} (recipe {r['recipe_batch_size']})"
        macs = f"{r['macs'] / 1e6:.2f} M / {r['macs_with_frontend'] / 1e6:.2f} M" if r.get("macs_with_frontend") else f"{r['macs'] / 1e6:.2f} M"
        lat = f"{r['latency_ms']:.2f}" if r.get("latency_ms") else "-"
        lines.append(f"| {Path(r['recipe']).name} | {r['model']} | {r['val_acc'] * 100:.2f}% | {r['params']:,} | {macs} | "
                     f"{lat} | {ep} | {bs} | {r['epoch_s']:.0f} | {r['clips_per_s']:.0f} | {r['wall_s'] / 60:.1f} min | "
                     f"{paper_figures(r['model'])} |")
    return "\n".join(lines)


def update_readme(rows: list[dict], readme: Path) -> None:
    if not replace_between(readme, START, END, render_table(rows)):
        print(f"{readme}: no {START} / {END} markers; table not written")


def load_rows() -> list[dict]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="*", default=DEFAULT_RECIPES)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"))
    ap.add_argument("--epochs", type=int, default=None,
                    help="CPU budget: train E epochs with the recipe's schedule compressed into them")
    ap.add_argument("--batch-size", type=int, default=None, help="one batch size for every recipe")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-gsc-dev"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--table-only", action="store_true", help="re-render README table and plot from the saved results")
    ap.add_argument("--reprofile", action="store_true",
                    help="re-measure params/MACs/latency of the saved runs (on a quiet machine), no training")
    a = ap.parse_args()
    if a.table_only or a.reprofile:
        a.recipes = []
    if a.recipes and not Path(a.data).is_dir():
        print(f"{a.data}: gsc-dev not found (pass --data)", file=sys.stderr)
        return 2
    for recipe in a.recipes:
        print(f"== {recipe}", flush=True)
        row = train_one(recipe, a.data, Path(a.out), a.epochs, a.batch_size, a.set)
        print(json.dumps(row), flush=True)
        # Re-read just before writing: several benchmark processes may share the results file.
        rows = [r for r in load_rows() if r["recipe"] != recipe] + [row]
        write_json(RESULTS, rows)
        update_readme(rows, Path(a.readme))  # after every row: a long run shows progress
    rows = load_rows()
    if a.reprofile:
        for r in rows:
            run = Path(a.out) / Path(r["recipe"]).stem
            if run.is_dir():
                r.update(profile_row(run))
                print(f"{r['recipe']}: latency {r['latency_ms']:.2f} ms", flush=True)
        write_json(RESULTS, rows)
    if a.table_only or a.reprofile:
        update_readme(rows, Path(a.readme))
    print(render_table(rows))
    if rows:  # from the saved rows: the plot can be redrawn without the run directories
        from kwskit.eval.plots import plot_pareto

        points = [{"name": r["model"], "accuracy": r["val_acc"], "macs": r["macs"],
                   "param_bytes": 4 * r["params"]} for r in rows]
        plot_pareto(points, RESULTS.parent / "pareto.png",
                    title=f"gsc-dev mini10: accuracy against compute and memory ({len(rows)} runs)",
                    metric="best validation accuracy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
