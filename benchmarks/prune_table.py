"""What structured pruning costs and buys on gsc-dev: validation accuracy, parameters, MACs and
latency of DS-CNN-S and BC-ResNet-1 with 25 / 50 / 75% of their MACs removed.

    python benchmarks/prune_table.py [--data ../shared/data/gsc-dev] [--collect] [--only study|table]

Every entry of ``STUDY`` and ``TABLE`` is ``kwskit.compress.prune.prune_run`` -- the same as
``kwskit prune RUN --sparsity S --steps K --finetune-epochs N --importance I --out
runs/prune-...`` -- with one thread and no MLflow; a run directory that already holds a
``prune.json`` with the same settings is reused. ``prune.json`` gives the validation accuracy
of the source run, right after pruning (no training) and after the fine-tune (its best
epoch; the training loop's validation pass, which equals ``kwskit eval RUN --split
validation``).

- ``STUDY``: the three importance criteria (l1 / bn / taylor) on both models at 50% of the
  MACs, one step, one fine-tune epoch -- which criterion loses least, and recovers best; the
  fine-tune at a tenth of the run's lr; l1 and taylor again with three epochs.
- ``TABLE``: 25 / 50 / 75% with the default criterion, one step, three fine-tune epochs, each
  with exact widths and with widths rounded to multiples of 4 (``--round-to 4``); and 75% in
  three steps of one epoch each (the same training budget).

Latency: the backbone alone (features in, logits out) on one clip, one thread: in PyTorch
(``kwskit.eval.profile.measure_latency``, as ``kwskit info``; 100 runs after 10 warm-ups) and
in ONNX Runtime (the backbone exported alone; 200 runs), repeated over three interleaved
rounds; the table gives the lowest of the three medians (the machine is shared).
Writes benchmarks/results/prune.md (``--collect``: only gather runs that exist).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kwskit.compress.prune import DEFAULT_IMPORTANCE, clip_features, prune_run  # noqa: E402
from kwskit.eval.profile import count_macs, count_params, measure_latency  # noqa: E402
from kwskit.models.io import load_model  # noqa: E402

SOURCES = {"DS-CNN-S": "runs/n11-dscnn-same", "BC-ResNet-1": "runs/n11-silence"}
# (model, sparsity, steps, fine-tune epochs per step, importance, lr as a share of the run's,
#  round_to)
STUDY = [(m, 0.5, 1, 1, imp, 1.0, 1) for m in SOURCES for imp in ("l1", "bn", "taylor")] + \
        [(m, 0.5, 1, 1, "l1", 0.1, 1) for m in SOURCES] + \
        [(m, 0.5, 1, 3, imp, 1.0, 1) for m in SOURCES for imp in ("l1", "taylor")]
# BC-ResNet-1 at 75% with --round-to 4 is out of reach: its 8-wide stage can only halve.
TABLE = [(m, s, 1, 3, DEFAULT_IMPORTANCE, 1.0, r) for r in (1, 4) for m in SOURCES
         for s in (0.25, 0.5, 0.75) if (m, s, r) != ("BC-ResNet-1", 0.75, 4)] + \
        [(m, 0.75, 3, 1, DEFAULT_IMPORTANCE, 1.0, 1) for m in SOURCES]
RESULTS = ROOT / "benchmarks" / "results" / "prune.md"


def source_lr(model: str) -> float:
    return load_model(ROOT / SOURCES[model])[1].optim.lr


def out_dir(model: str, sparsity: float, steps: int, epochs: int, importance: str,
            lr_share: float, round_to: int) -> Path:
    name = load_model(ROOT / SOURCES[model])[1].model.name
    lr = "" if lr_share == 1.0 else f"-lr{lr_share:g}"
    rounded = "" if round_to == 1 else f"-r{round_to}"
    return ROOT / "runs" / (f"prune-{name}-s{round(100 * sparsity)}-k{steps}-e{epochs}-"
                            f"{importance}{lr}{rounded}")


def finished(out: Path, settings: tuple) -> dict | None:
    path = out / "prune.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    sparsity, steps, epochs, importance, lr, round_to = settings
    same = (r["sparsity"], r["steps"], r["finetune_epochs"], r["importance"],
            r.get("round_to", 1)) == (sparsity, steps, epochs, importance, round_to) \
        and abs(r["lr"] - lr) < 1e-12
    return r if same else None


def run_or_collect(plan, data: str, collect: bool) -> list[dict]:
    rows = []
    for model, sparsity, steps, epochs, importance, lr_share, round_to in plan:
        out = out_dir(model, sparsity, steps, epochs, importance, lr_share, round_to)
        lr = lr_share * source_lr(model)
        r = finished(out, (sparsity, steps, epochs, importance, lr, round_to))
        if r is None and not collect:
            if out.exists():
                sys.exit(f"{out}: holds an unfinished or different run; remove it first")
            t0 = time.time()
            print(f"{model} {importance} {sparsity:.0%} in {steps} step(s) x {epochs} epoch(s), "
                  f"lr {lr:g}, round to {round_to} -> {out}", flush=True)
            r = prune_run(ROOT / SOURCES[model], out, sparsity=sparsity, steps=steps,
                          finetune_epochs=epochs, importance=importance, data=data, lr=lr,
                          round_to=round_to)
            r["seconds"] = round(time.time() - t0, 1)
            (out / "prune.json").write_text(json.dumps(r, indent=1))
            last = r["history"][-1]
            print(f"  {r['seconds']:.0f} s: {last['sparsity']:.1%} of MACs removed, val "
                  f"{r['base']['val_acc']:.4f} -> pruned {last['pruned_val_acc']:.4f} -> "
                  f"fine-tuned {last['finetuned_val_acc']:.4f}", flush=True)
        if r is not None:
            rows.append({**r, "label": model, "run": out, "lr_share": lr_share,
                         "round_to": round_to})
    return rows


def _ort_ms(path: Path, feats: torch.Tensor, repeats: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: feats.numpy()}
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def latencies(runs: dict[str, Path], rounds: int = 3) -> dict[str, dict]:
    """Per run: the lowest of ``rounds`` interleaved medians, ms per clip, of the backbone
    (features in, logits out) on one thread: in PyTorch (``kwskit info``'s measurement) and
    in ONNX Runtime (the backbone exported alone: the front-end costs the same for all)."""
    models, best = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (key, run) in enumerate(runs.items()):
            pipeline = load_model(run)[0]
            feats = clip_features(pipeline, 16000)
            path = Path(tmp) / f"{i}.onnx"
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(pipeline.backbone.eval(), (feats,), str(path), dynamo=True,
                                  opset_version=18)
            models[key] = (pipeline.backbone, feats, path)
            best[key] = {"torch_ms": float("inf"), "ort_ms": float("inf")}
        for _ in range(rounds):
            for key, (backbone, feats, path) in models.items():
                ms = measure_latency(backbone, feats, threads=1, warmup=10, repeats=100)
                best[key]["torch_ms"] = min(best[key]["torch_ms"], ms["median_ms"])
                best[key]["ort_ms"] = min(best[key]["ort_ms"], _ort_ms(path, feats, 200))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"))
    ap.add_argument("--collect", action="store_true", help="only gather finished runs")
    ap.add_argument("--only", choices=["study", "table"], help="run only one part (the other "
                    "is collected)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    study = run_or_collect(STUDY, a.data, a.collect or a.only == "table")
    table = run_or_collect(TABLE, a.data, a.collect or a.only == "study")
    runs = {f"base {m}": ROOT / src for m, src in SOURCES.items()}
    runs.update({str(r["run"]): r["run"] for r in table})
    lat = latencies(runs)
    write_table(study, table, lat)
    print(RESULTS.read_text())
    return 0


def widths(run: Path) -> str:
    """The conv widths of a run's backbone (its distinct output channel counts)."""
    backbone = load_model(run)[0].backbone
    return "/".join(str(c) for c in sorted({m.out_channels for m in backbone.modules()
                                            if isinstance(m, torch.nn.Conv2d)}))


def _ms(lat: dict) -> str:
    return f"{lat['torch_ms']:.2f} | {lat['ort_ms']:.3f}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def write_table(study: list[dict], table: list[dict], lat: dict[str, float]) -> None:
    today = datetime.date.today().isoformat()
    lines = [
        "# Structured pruning on gsc-dev (mini10, validation)",
        "",
        f"Measured {today} with `python benchmarks/prune_table.py` (one thread; a 2-core CPU "
        "shared with other jobs, so seconds and latencies are indicative). Sparsity = share of "
        "the backbone's MACs removed (one 1-s clip, `kwskit info`'s count); every prunable "
        "channel group loses the same share of channels (torch-pruning 1.6, local pruning). "
        "Fine-tune: cosine from the run's own lr, no warm-up; *fine-tuned* = its best epoch. "
        "1823 validation clips: one clip is 0.055 points.",
        "",
        "## Importance criterion and fine-tune lr (50% of MACs, one step, exact widths)",
        "",
        "| model | importance | fine-tune peak lr | epochs | source val | right after pruning | "
        "fine-tuned |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in study:
        h = r["history"][-1]
        share = "the run's" if r["lr_share"] == 1.0 else f"{r['lr_share']:g} x the run's"
        lines.append(f"| {r['label']} | {r['importance']} | {r['lr']:g} ({share}) | "
                     f"{r['finetune_epochs']} | {_pct(r['base']['val_acc'])} | "
                     f"{_pct(h['pruned_val_acc'])} | {_pct(h['finetuned_val_acc'])} |")
    lines += [
        "",
        f"## Sparsity ({DEFAULT_IMPORTANCE} importance)",
        "",
        "| model | MACs removed (asked) | steps x epochs | --round-to | channels | params | "
        "MACs | ms PyTorch | ms ONNX Runtime | right after pruning | fine-tuned val | "
        "vs source |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, src in SOURCES.items():
        base = load_model(ROOT / src)[0]
        feats = clip_features(base, 16000)
        acc = json.loads((ROOT / src / "metrics.json").read_text())["best"]["val_acc"]
        lines.append(f"| {model} | 0 (source run) | - | - | {widths(ROOT / src)} | "
                     f"{count_params(base.backbone):,} | "
                     f"{count_macs(base.backbone, feats) / 1e6:.2f} M | "
                     f"{_ms(lat[f'base {model}'])} | - | {_pct(acc)} | - |")
        for r in (r for r in table if r["label"] == model):
            f, h = r["final"], r["history"][-1]
            lines.append(
                f"| {model} | {100 * f['sparsity']:.1f}% ({100 * r['sparsity']:.0f}%) | "
                f"{r['steps']} x {r['finetune_epochs']} | {r['round_to']} | {widths(r['run'])} | "
                f"{f['params']:,} | "
                f"{f['macs'] / 1e6:.2f} M | {_ms(lat[str(r['run'])])} | "
                f"{_pct(h['pruned_val_acc'])} | **{_pct(f['val_acc'])}** | "
                f"{100 * (f['val_acc'] - r['base']['val_acc']):+.2f} |")
    lines += [
        "",
        "*right after pruning*: the pruned weights before any training (for K steps: after the "
        "last step's pruning, from the previous step's fine-tuned weights). *ms*: the backbone "
        "alone per clip, batch 1, one thread, lowest of three interleaved medians. At batch 1 "
        "PyTorch's time is mostly per-operator overhead (BC-ResNet-1 runs 333 small ATen ops "
        "per clip), so removing MACs shows in ONNX Runtime, not in eager PyTorch; the "
        "front-end (STFT, mel, MFCC) is the same for all and not included.",
        "",
        "*channels*: the distinct conv widths. `--round-to 4` (the default) keeps them "
        "multiples of 4; BC-ResNet-1 can then lose at most 65.7% of its MACs (its 8-wide "
        "stage can only halve), so 75% has no row.",
        "",
        "Runs: `runs/prune-MODEL-sS-kK-eE-IMPORTANCE[-rN]` (each holds `prune.json` with every "
        "step).",
        ""]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
