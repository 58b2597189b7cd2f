"""A small student trained with and without knowledge distillation, at the same budget.

    python benchmarks/distill_table.py                  # the default arms, 20 epochs each
    python benchmarks/distill_table.py --arms ce,kd     # some arms
    python benchmarks/distill_table.py --table-only     # re-render from the saved runs

Student: the CRNN recipe (configs/crnn.yaml) shrunk to channels 4, hidden 16 (~6.8 K params,
the homework's ~10x compression of the 71 K base), on gsc-dev mini10, every arm with the same
config, epochs, batch and seed. Arms: cross-entropy only (plain training); logit distillation
(Hinton et al. 2015, arXiv:1503.02531); logits + attention over time (pooling-weight KL, weight
1 and 0.1); logits + FitNets feature MSE (arXiv:1412.6550) through the 16 -> 64 projection;
and (--arms kd-bcres, not by default) logit distillation from a teacher of another family
(BC-ResNet-1). Teachers are read-only runs: runs/crnn-teacher (CRNN base, 71 K) and
runs/n11-silence (BC-ResNet-1, 9 K).

Each arm trains into runs/kd-<arm> (an arm whose run is complete is not trained again), is
evaluated on the validation split with kwskit.eval.evaluate.evaluate_run, and the table goes
to benchmarks/results/distill.md. Run it with one thread: KWSKIT_THREADS=1 OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kwskit.config import load_config  # noqa: E402
from kwskit.fsutil import write_text  # noqa: E402

RECIPE = ROOT / "configs" / "crnn.yaml"
STUDENT = ["data.labels=mini10", "model.args.channels=4", "model.args.hidden=16",
           "train.batch_size=100", "optim.lr=0.001"]
CRNN_TEACHER, BCRES_TEACHER = ROOT / "runs" / "crnn-teacher", ROOT / "runs" / "n11-silence"
KD = {"temperature": 4.0, "alpha": 0.5}
# arm -> (teacher or None, distillation settings)
ARMS = {
    "ce": (None, {}),
    "kd": (CRNN_TEACHER, KD),
    "kd-att": (CRNN_TEACHER, {**KD, "attention_weight": 1.0}),
    "kd-att-0.1": (CRNN_TEACHER, {**KD, "attention_weight": 0.1}),
    "kd-feat": (CRNN_TEACHER, {**KD, "feature_weight": 1.0}),
    "kd-bcres": (BCRES_TEACHER, KD),
}
# kd-bcres is not run by default: BC-ResNet-1's forward pass costs about 5x the student's
# training step on one thread (0.68 s per batch of 128 on the shared machine)
DEFAULT_ARMS = ["ce", "kd", "kd-att", "kd-att-0.1", "kd-feat"]
TABLE = ROOT / "benchmarks" / "results" / "distill.md"


def complete(run: Path, epochs: int, teacher) -> bool:
    metrics = run / "metrics.json"
    if not metrics.is_file() or (teacher is not None and not (run / "distill.json").is_file()):
        return False
    return len(json.loads(metrics.read_text())["history"]) == epochs


def train_arm(arm: str, data: str, epochs: int, out_root: Path) -> None:
    from kwskit.compress.distill import distill
    from kwskit.train.loop import fit

    teacher, kd = ARMS[arm]
    run = out_root / f"kd-{arm}"
    if complete(run, epochs, teacher):
        print(f"{arm}: {run} is complete, not trained again", flush=True)
        return
    if run.exists():  # a partial run of this benchmark
        shutil.rmtree(run)
    cfg = load_config(RECIPE, [*STUDENT, f"train.epochs={epochs}"])
    t0 = time.time()
    if teacher is None:
        fit(cfg, run, data=data, track=False)
    else:
        distill(cfg, run, teacher, data=data, track=False, **kd)
    print(f"{arm}: trained in {(time.time() - t0) / 60:.1f} min", flush=True)


def row_of(arm: str, data: str, out_root: Path) -> dict | None:
    from kwskit.eval.evaluate import evaluate_run
    from kwskit.eval.profile import count_params
    from kwskit.models.io import load_model

    run = out_root / f"kd-{arm}"
    if not (run / "metrics.json").is_file():
        return None
    metrics = json.loads((run / "metrics.json").read_text())
    record = json.loads((run / "distill.json").read_text()) if (run / "distill.json").is_file() else {}
    ev, _ = evaluate_run(run, data, split="validation")
    areas = [v["area"] for v in ev["far_frr"].values() if v["area"] is not None]
    model, _, _ = load_model(run)
    hist = metrics["history"]
    return {"arm": arm, "run": str(run.relative_to(ROOT)), "teacher": record.get("teacher_model"),
            "teacher_val_acc": record.get("teacher_val_acc"),
            "temperature": record.get("temperature"), "alpha": record.get("alpha"),
            "feature_weight": record.get("feature_weight", 0.0),
            "attention_weight": record.get("attention_weight", 0.0),
            "attention": record.get("attention"), "features": record.get("features"),
            "val_acc": ev["accuracy"], "macro_f1": ev["macro_f1"],
            "far_frr_area": sum(areas) / len(areas), "n": ev["n"],
            "best_epoch": metrics["best"]["epoch"], "epochs": len(hist),
            "params": count_params(model),
            "epoch_s": sum(h["seconds"] for h in hist) / len(hist),
            "date": time.strftime("%Y-%m-%d", time.localtime((run / "metrics.json").stat().st_mtime))}


def render(rows: list[dict]) -> str:
    lines = ["| arm | teacher (val acc) | loss | val acc | macro F1 | FAR/FRR area | best epoch "
             "| s/epoch | run |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["teacher"] is None:
            teacher, loss = "-", "cross-entropy"
        else:
            teacher = f"{r['teacher']} ({100 * r['teacher_val_acc']:.2f}%)"
            loss = f"{r['alpha']:g} KD (T={r['temperature']:g}) + {1 - r['alpha']:g} CE"
            if r["attention_weight"]:
                a = r["attention"]
                loss += f" + {r['attention_weight']:g} attention KL ({a['teacher']} -> {a['student']})"
            if r["feature_weight"]:
                loss += f" + {r['feature_weight']:g} feature MSE ({r['features']['projection']})"
        lines.append(f"| {r['arm']} | {teacher} | {loss} | {100 * r['val_acc']:.2f}% | "
                     f"{r['macro_f1']:.4f} | {r['far_frr_area']:.4f} | {r['best_epoch']} of "
                     f"{r['epochs']} | {r['epoch_s']:.0f} | {r['run']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                    help=f"comma-separated, of: {', '.join(ARMS)}")
    ap.add_argument("--out", default=str(ROOT / "runs"), help="folder of the kd-<arm> runs")
    ap.add_argument("--table-only", action="store_true", help="evaluate the saved runs, no training")
    a = ap.parse_args()
    arms = [x for x in a.arms.split(",") if x]
    unknown = [x for x in arms if x not in ARMS]
    if unknown:
        print(f"--arms: unknown {', '.join(unknown)} (valid: {', '.join(ARMS)})", file=sys.stderr)
        return 2
    out_root = Path(a.out)
    if not a.table_only:
        for arm in arms:
            train_arm(arm, a.data, a.epochs, out_root)
    rows = [r for r in (row_of(arm, a.data, out_root) for arm in ARMS) if r is not None]
    student = load_config(RECIPE, STUDENT)
    params = rows[0]["params"] if rows else 0
    text = (f"# Knowledge distillation into a small CRNN (gsc-dev mini10, validation split)\n\n"
            f"Produced by `KWSKIT_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/distill_table.py"
            f" --epochs {a.epochs}` ({time.strftime('%Y-%m-%d')}); one seed "
            f"({student.train.seed}) per arm, one CPU thread.\n\n"
            f"Student: configs/crnn.yaml with `{' '.join('--set ' + s for s in STUDENT)}` "
            f"({params:,} params), the same config, epochs and seed in every arm. The teacher "
            f"sees the student's batch after waveform augmentation, without the student's "
            f"SpecAugment. FAR/FRR area: mean over the 8 keywords (lower is better).\n\n"
            f"{render(rows)}\n")
    write_text(TABLE, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
