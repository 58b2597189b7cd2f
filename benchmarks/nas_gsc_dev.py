"""Architecture search on real speech: found MBConv models against the zoo at equal training.

    python benchmarks/nas_gsc_dev.py [--data ../shared/data/gsc-dev] [--only NAME ...] [--collect]

Every entry of ``EXPERIMENTS`` is two commands, run as subprocesses with one torch thread:

    kwskit nas --data DATA --labels mini10 --target-macs T --beta B --n-mfcc N --width-mult W \
        --loss L --out runs/nas/NAME/search            # default search: 3 warm-up + 6 epochs
    kwskit train --config runs/nas/NAME/search/found.yaml --data DATA --labels mini10 \
        --budget-epochs 15 --set train.batch_size=100 --set train.threads=1 \
        --out runs/nas/NAME/train

A finished search or training is reused, an interrupted one resumed, so the script can be
stopped and started again, and several copies with different ``--only`` can share the machine.
The found models train with the zoo's gsc-dev budget (15 epochs at batch 100, the recipe's
schedule compressed into them; README "Results on real speech"), so their validation accuracy
compares with the zoo rows of benchmarks/results/gsc_dev.json; where a zoo model was re-trained
with kwskit's current silence defaults at that budget (benchmarks/results/stream_ablation_*.json),
that newer figure is used and marked, because the found models were trained with those defaults.

Writes benchmarks/results/nas.md (table), nas.json and nas.png (validation accuracy against
MACs: found models, the zoo, and the zoo's Pareto front). Where a model was trained with more
than one seed, its accuracy is the mean (the seeds are listed); note that the seed also draws
which silence and unknown clips the validation split holds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
EPOCHS, BATCH = 15, 100
# name -> (target MACs, beta, n_mfcc, width multiplier, loss)
EXPERIMENTS = {
    "t1.5M-mfcc10-w1": ("1.5M", 8.0, 10, 1.0, "target"),
    "t2.5M-mfcc10-w1": ("2.5M", 8.0, 10, 1.0, "target"),
    "t5M-mfcc10-w1": ("5M", 8.0, 10, 1.0, "target"),
    "t2.5M-mfcc20-w1": ("2.5M", 8.0, 20, 1.0, "target"),
    "t2.5M-mfcc40-w1": ("2.5M", 8.0, 40, 1.0, "target"),
    "t2.5M-mfcc10-w0.75": ("2.5M", 8.0, 10, 0.75, "target"),
    "t2.5M-mfcc10-w1.25": ("2.5M", 8.0, 10, 1.25, "target"),
    "mullog-b8-mfcc10-w1": ("2.5M", 8.0, 10, 1.0, "mul-log"),  # 001's loss: the target is moot
}
# found models trained again with other seeds (train-s1, ...): how much of a gap is seed noise
EXTRA_SEEDS = {"t2.5M-mfcc10-w1": (1,), "mullog-b8-mfcc10-w1": (1,)}
ZOO = ("dscnn_s", "bcresnet1", "tcresnet8", "crnn", "bcresnet3", "matchboxnet_3x1x64",
       "lambda_resnet18", "sincconv_gdsconv")
# zoo models re-trained with the current silence defaults at the same budget (issue-11 runs)
# (file, row names: one per seed, averaged)
ZOO_CURRENT = {"bcresnet1": ("stream_ablation_bcresnet1.json", ("silence -80..-10 dBFS (default)",)),
               "dscnn_s": ("stream_ablation_bcresnet1.json", ("DS-CNN-S",)),
               "tcresnet8": ("stream_ablation_tcresnet8.json", ("TC-ResNet8", "TC-ResNet8, seed 1"))}


def run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "KWSKIT_THREADS": "1", "OMP_NUM_THREADS": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def search_done(out: Path) -> bool:
    path = out / "search.json"
    if not path.exists():
        return False
    r = json.loads(path.read_text())
    return len(r["history"]) == r["settings"]["warmup_epochs"] + r["settings"]["epochs"]


def train_done(out: Path) -> bool:
    path = out / "metrics.json"
    return path.exists() and len(json.loads(path.read_text())["history"]) >= EPOCHS


def experiment(name: str, data: str, runs: Path) -> None:
    target, beta, n_mfcc, width, loss = EXPERIMENTS[name]
    s_out, t_out = runs / name / "search", runs / name / "train"
    if not search_done(s_out):
        cmd = ["kwskit", "nas", "--out", str(s_out)]
        if (s_out / "checkpoints" / "search.pt").exists():
            cmd.append("--resume")
        else:
            cmd += ["--data", data, "--labels", "mini10", "--target-macs", target, "--beta",
                    str(beta), "--n-mfcc", str(n_mfcc), "--width-mult", str(width), "--loss", loss]
        run(cmd, runs / name / "search.log")
    for seed in (0, *EXTRA_SEEDS.get(name, ())):
        t_out = runs / name / ("train" if seed == 0 else f"train-s{seed}")
        if train_done(t_out):
            continue
        if (t_out / "checkpoints" / "last.pt").exists():
            cmd = ["kwskit", "train", "--resume", str(t_out), "--no-mlflow"]
        else:
            cmd = ["kwskit", "train", "--config", str(s_out / "found.yaml"), "--data", data,
                   "--labels", "mini10", "--budget-epochs", str(EPOCHS), "--set",
                   f"train.batch_size={BATCH}", "--set", "train.threads=1", "--set",
                   f"train.seed={seed}", "--out", str(t_out), "--no-mlflow"]
        run(cmd, t_out.parent / f"{t_out.name}.log")


def found_row(name: str, runs: Path) -> dict | None:
    from kwskit.eval.info import profile_target

    s_out, t_out = runs / name / "search", runs / name / "train"
    if not search_done(s_out):
        return None
    search = json.loads((s_out / "search.json").read_text())
    target, beta, n_mfcc, width, loss = EXPERIMENTS[name]
    row = {"name": name, "kind": "found", "target": target if loss == "target" else "-",
           "loss": loss, "beta": beta, "n_mfcc": n_mfcc, "width_mult": width,
           "ops": search["found"]["ops"], "macs": search["found"]["cost"],
           "params": search["found"]["params"], "val_acc": None, "val_acc_seeds": [],
           "search_cost": search["found"]["cost"], "search_min": search["search_seconds"] / 60,
           "train_min": None, "lookahead_frames": search["found"]["lookahead_frames"]}
    if not train_done(t_out):  # searched, not trained yet: listed without an accuracy
        return row
    metrics = json.loads((t_out / "metrics.json").read_text())
    prof = profile_target(str(t_out), latency=False)
    seeds = [metrics["best"]["val_acc"]] + [
        json.loads((runs / name / f"train-s{k}" / "metrics.json").read_text())["best"]["val_acc"]
        for k in EXTRA_SEEDS.get(name, ()) if train_done(runs / name / f"train-s{k}")]
    row.update(macs=prof["macs"], params=prof["params"], val_acc=sum(seeds) / len(seeds),
               val_acc_seeds=seeds, train_min=sum(r["seconds"] for r in metrics["history"]) / 60)
    return row


def zoo_rows() -> list[dict]:
    rows = {r["model"]: r for r in json.loads((RESULTS / "gsc_dev.json").read_text())}
    out = []
    for name in ZOO:
        r = rows[name]
        row = {"name": name, "kind": "zoo", "macs": r["macs"], "params": r["params"],
               "val_acc": r["val_acc"], "note": f"gsc_dev.json ({r['date']})"}
        if name in ZOO_CURRENT:
            file, keys = ZOO_CURRENT[name]
            saved = json.loads((RESULTS / file).read_text())["rows"]
            row["val_acc_seeds"] = [saved[k]["val_acc"] for k in keys]
            row["val_acc"] = sum(row["val_acc_seeds"]) / len(keys)
            row["note"] = f"current silence defaults, {len(keys)} seed(s) ({file})"
        out.append(row)
    return out


def pareto_front(points: list[dict]) -> list[dict]:
    front, best = [], -1.0
    for p in sorted(points, key=lambda q: (q["macs"], -q["val_acc"])):
        if p["val_acc"] > best:
            front.append(p)
            best = p["val_acc"]
    return front


def plot(found: list[dict], zoo: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    from kwskit.eval.plots import place_labels

    fig, ax = plt.subplots(figsize=(9, 5.2))
    for rows, marker, color, label in ((zoo, "o", "tab:blue", "zoo (hand-designed)"),
                                       (found, "*", "tab:red", "found by kwskit nas")):
        ax.scatter([r["macs"] for r in rows], [100 * r["val_acc"] for r in rows], marker=marker,
                   s=90 if marker == "*" else 45, color=color, zorder=3, label=label)
    for rows, style, label in ((zoo, ":", "zoo Pareto front"), (zoo + found, "--", "Pareto front, all")):
        f = pareto_front(rows)
        ax.plot([r["macs"] for r in f], [100 * r["val_acc"] for r in f], style, color="0.45",
                zorder=2, label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("MACs per 1-s clip (model, front-end excluded)")
    ax.set_ylabel("gsc-dev validation accuracy, mini10 (%)")
    ax.set_title(f"Found models vs the zoo, {EPOCHS} epochs each on gsc-dev")
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.2, y=0.1)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    rows = zoo + found
    place_labels(ax, [r["macs"] for r in rows], [100 * r["val_acc"] for r in rows],
                 [r["name"] for r in rows])
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(runs: Path) -> None:
    listed = [r for r in (found_row(n, runs) for n in EXPERIMENTS) if r]
    found = [r for r in listed if r["val_acc"] is not None]
    zoo = zoo_rows()
    date = datetime.date.today().isoformat()
    (RESULTS / "nas.json").write_text(json.dumps({"date": date, "found": listed, "zoo": zoo}, indent=1))
    if not found:
        print("no finished experiment yet")
        return
    plot(found, zoo, RESULTS / "nas.png")
    zoo_front = pareto_front(zoo)

    def beats_zoo(r):
        """The best zoo accuracy at no more MACs, and whether r is above it."""
        below = [z for z in zoo_front if z["macs"] <= r["macs"]]
        best = max((z["val_acc"] for z in below), default=0.0)
        return best, r["val_acc"] > best

    lines = [f"Measured {date} on this 2-core CPU, one torch thread per job, mini10; one seed "
             "unless seeds are listed (then the mean).", "",
             "| found model | loss | target | n_mfcc | width | ops (8 layers) | params | MACs | val acc "
             "| best zoo at <= MACs | above the zoo front? | search | training |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(listed, key=lambda q: q["macs"]):
        if r["val_acc"] is None:
            lines.append(f"| {r['name']} | {r['loss']} (beta {r['beta']:g}) | {r['target']} | {r['n_mfcc']} | "
                         f"{r['width_mult']:g} | `{' '.join(r['ops'])}` | {r['params']:,} | "
                         f"{r['macs'] / 1e6:.2f} M | not trained yet | | | {r['search_min']:.0f} min | |")
            continue
        best, above = beats_zoo(r)
        seeds = " (seeds: " + " / ".join(f"{100 * v:.2f}%" for v in r["val_acc_seeds"]) + ")" \
            if len(r["val_acc_seeds"]) > 1 else ""
        lines.append(f"| {r['name']} | {r['loss']} (beta {r['beta']:g}) | {r['target']} | {r['n_mfcc']} | {r['width_mult']:g} | "
                     f"`{' '.join(r['ops'])}` | {r['params']:,} | {r['macs'] / 1e6:.2f} M | "
                     f"{100 * r['val_acc']:.2f}%{seeds} | {100 * best:.2f}% | {'yes' if above else 'no'} | "
                     f"{r['search_min']:.0f} min | {r['train_min']:.0f} min |")
    lines += ["", "| zoo model | params | MACs | val acc | source |", "|---|---|---|---|---|"]
    for z in sorted(zoo, key=lambda q: q["macs"]):
        seeds = " (seeds: " + " / ".join(f"{100 * v:.2f}%" for v in z["val_acc_seeds"]) + ")" \
            if len(z.get("val_acc_seeds", ())) > 1 else ""
        lines.append(f"| {z['name']} | {z['params']:,} | {z['macs'] / 1e6:.2f} M | "
                     f"{100 * z['val_acc']:.2f}%{seeds} | {z['note']} |")
    (RESULTS / "nas.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"))
    p.add_argument("--runs", default=str(ROOT / "runs" / "nas"))
    p.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), help="run only these")
    p.add_argument("--collect", action="store_true", help="only gather finished runs")
    a = p.parse_args()
    runs = Path(a.runs)
    if not a.collect:
        if not Path(a.data).is_dir():
            print(f"{a.data}: no such data folder (pass --data)", file=sys.stderr)
            return 2
        for name in a.only or EXPERIMENTS:
            experiment(name, a.data, runs)
    write_results(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
