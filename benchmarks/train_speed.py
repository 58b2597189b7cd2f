"""Training speed and accuracy at equal epochs: kwskit against the official BC-ResNet code.

Runs, back to back and alternating (peer, kwskit, peer, kwskit, ...) so that both see the same
machine load, for each BC-ResNet size:

- the reference: ../shared/bench/peer_bcresnet.py (Qualcomm-AI-research/bcresnet's training
  code on gsc-dev; needs MIRROR, see that folder's README), its clips/s and its validation
  accuracy (its protocol: silence = zero clips, unknown capped at 120);
- kwskit: ``kwskit train --config configs/bcresnetT.yaml --budget-epochs E`` with the same
  threads, its clips/s (training clips over training seconds, all epochs) and validation
  accuracy on gsc-dev's validation split; and the same kwskit model scored on the reference's
  own validation folder (its zero-silence clips, all its unknown clips) with ``kwskit eval``.

Both train on gsc-dev's training speakers with batch 100 and their recipes' schedules
compressed into E epochs. Prints a table, writes benchmarks/results/train_speed.md / .json and
the table in README.md between the train-speed markers.

Usage: MIRROR=/path/to/mirror python benchmarks/train_speed.py [--tau 1 3] [--epochs 2]
       [--threads 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kwskit.fsutil import replace_between, write_json, write_text  # noqa: E402

SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- train-speed:start -->", "<!-- train-speed:end -->"  # the README's table
CONFIGS = {1: "configs/bcresnet1.yaml", 1.5: "configs/bcresnet1_5.yaml", 2: "configs/bcresnet2.yaml",
           3: "configs/bcresnet3.yaml", 6: "configs/bcresnet6.yaml", 8: "configs/bcresnet8.yaml"}


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def run_peer(tau: float, epochs: int, threads: int) -> dict:
    if not os.environ.get("MIRROR"):
        raise SystemExit("MIRROR is not set: fetch Qualcomm-AI-research/bcresnet and point MIRROR "
                         "at the folder holding Qualcomm-AI-research+bcresnet/repo")
    out = subprocess.run([sys.executable, str(SHARED / "bench" / "peer_bcresnet.py"), "--tau", f"{tau:g}",
                          "--epochs", str(epochs), "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    r = _last_json(out.stdout)
    return {"clips_per_s": r["clips_per_s"], "val_acc": r["val_acc"], "train_s": r["train_s"]}


def peer_val_folder() -> Path:
    work = os.environ.get("PEER_WORK") or os.path.join(tempfile.gettempdir(), "kwskit-peer")
    return Path(work) / "peer-data" / "valid_12class"


def run_kwskit(tau: float, epochs: int, threads: int, data: str, work: Path,
               extra: list[str]) -> dict:
    out = work / f"bcresnet{tau:g}-e{epochs}"
    if out.exists():
        shutil.rmtree(out)
    sets = [f"train.threads={threads}", *extra]
    subprocess.run([sys.executable, "-m", "kwskit", "train", "--config", CONFIGS[tau], "--data", data,
                    "--labels", "mini10", "--budget-epochs", str(epochs), "--out", str(out),
                    "--no-mlflow", *[x for s in sets for x in ("--set", s)]],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    hist = json.loads((out / "metrics.json").read_text())["history"]
    seconds = sum(h["seconds"] for h in hist)
    clips = sum(h["clips_per_s"] * h["seconds"] for h in hist)
    row = {"clips_per_s": round(clips / seconds, 1), "val_acc": hist[-1]["val_acc"],
           "train_s": round(seconds), "curve": [round(h["val_acc"], 4) for h in hist]}
    folder = peer_val_folder()
    if folder.is_dir():  # the reference's validation protocol, scored by kwskit eval
        ev = subprocess.run([sys.executable, "-m", "kwskit", "eval", str(out), "--data", str(folder),
                             "--checkpoint", "last", "--json"], cwd=ROOT, check=True,
                            capture_output=True, text=True)
        row["peer_protocol_acc"] = _last_json(ev.stdout)["accuracy"]
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | epochs | threads | reference clips/s | kwskit clips/s | speed-up | "
             "reference val acc (its protocol) | kwskit val acc | kwskit on the reference's "
             "val folder |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, k = r["peer"], r["kwskit"]
        pp = f"{100 * k['peer_protocol_acc']:.2f}%" if "peer_protocol_acc" in k else "-"
        lines.append(f"| BC-ResNet-{r['tau']:g} | {r['epochs']} | {r['threads']} | "
                     f"{p['clips_per_s']:.0f} | {k['clips_per_s']:.0f} | "
                     f"{k['clips_per_s'] / p['clips_per_s']:.2f}x | {100 * p['val_acc']:.2f}% | "
                     f"{100 * k['val_acc']:.2f}% | {pp} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tau", type=float, nargs="+", default=[1.0, 3.0], choices=sorted(CONFIGS))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="alternating pairs per size (median kept)")
    ap.add_argument("--data", default=str(SHARED / "data" / "gsc-dev"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra kwskit config overrides (an experiment, not the recipe)")
    ap.add_argument("--name", default="train_speed", help="results file stem")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kwskit-speed-"))
    rows = []
    try:
        for tau in a.tau:
            pairs = []
            for i in range(a.repeats):
                peer = run_peer(tau, a.epochs, a.threads)
                kw = run_kwskit(tau, a.epochs, a.threads, a.data, work, a.set)
                pairs.append((peer, kw))
                print(f"BC-ResNet-{tau:g} pair {i + 1}: reference {peer['clips_per_s']:.0f} clips/s "
                      f"(val {100 * peer['val_acc']:.2f}%), kwskit {kw['clips_per_s']:.0f} clips/s "
                      f"(val {100 * kw['val_acc']:.2f}%)", flush=True)
            ratio = sorted(pairs, key=lambda pk: pk[1]["clips_per_s"] / pk[0]["clips_per_s"])
            peer, kw = ratio[len(ratio) // 2]  # the pair with the median speed-up
            rows.append({"tau": tau, "epochs": a.epochs, "threads": a.threads, "peer": peer,
                         "kwskit": kw, "pairs": [{"peer": p, "kwskit": k} for p, k in pairs]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = table(rows)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    write_text(RESULTS / f"{a.name}.md", f"{text}\n\n({stamp}, `python benchmarks/train_speed.py "
               f"--epochs {a.epochs} --threads {a.threads}`{''.join(' --set ' + s for s in a.set)})\n")
    settings = {**vars(a), "data": os.path.relpath(a.data, ROOT)}  # no machine paths in results
    write_json(RESULTS / f"{a.name}.json", {"date": stamp, "settings": settings, "rows": rows})
    if a.name == "train_speed":  # experiments with another --name leave the README alone
        replace_between(ROOT / "README.md", START, END, text)


if __name__ == "__main__":
    main()
