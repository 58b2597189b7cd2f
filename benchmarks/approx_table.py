"""A trained SincConv model with its sinc filters and log computed as hardware would.

    KWSKIT_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/approx_table.py [--run RUN] [--data DIR]

Mittermaier et al. 2019 (arXiv:1911.02086) name computing the sinc filters and the log
compression in hardware as their next step. For one trained run (default runs/approx-sinc:
sincconv_dsconv, gsc-dev mini10, 8 epochs) this scores on the validation split, with the same
weights and no retraining: the exact model; CORDIC sinc filters (kwskit.layers.approx_math,
16 fractional bits) with 8 / 12 / 16 iterations; the exponent + linear-mantissa log (1 and 4
segments); and both together. It also tabulates the approximations on their own: CORDIC sine
error over [-pi, pi], the shift-subtract divider's error and log2_pwl's error. Writes
benchmarks/results/approx.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kwskit.compress.approx import approximation_errors, validation_accuracy  # noqa: E402
from kwskit.fsutil import write_text  # noqa: E402
from kwskit.layers.approx_math import (approx_spec, cordic_sin, fixed_div, from_fixed,  # noqa: E402
                                       log2_pwl, to_fixed)
from kwskit.models.io import (arch_of, build_from_arch, load_model, read_checkpoint,  # noqa: E402
                              resolve_checkpoint)

TABLE = ROOT / "benchmarks" / "results" / "approx.md"
# arm name -> approx spec (None: the exact model)
ARMS = {
    "exact (float sin, division, log1p)": None,
    "sinc CORDIC, 8 iterations": {"sinc": "cordic", "log": "exact", "cordic_iters": 8},
    "sinc CORDIC, 12 iterations": {"sinc": "cordic", "log": "exact", "cordic_iters": 12},
    "sinc CORDIC, 16 iterations": {"sinc": "cordic", "log": "exact", "cordic_iters": 16},
    "log2pwl, 1 segment (Mitchell)": {"sinc": "exact", "log": "log2pwl", "log_segments": 1},
    "log2pwl, 4 segments": {"sinc": "exact", "log": "log2pwl", "log_segments": 4},
    "both: CORDIC 12 + log2pwl 1": {"cordic_iters": 12, "log_segments": 1},
    "both: CORDIC 16 + log2pwl 1": {"cordic_iters": 16, "log_segments": 1},
}


def function_errors() -> list[str]:
    """Markdown rows: each approximation against the exact function, alone."""
    theta = torch.linspace(-math.pi, math.pi, 200_001, dtype=torch.float64)
    rows = ["| CORDIC sine, max abs error over [-pi, pi] | 8 it. | 12 it. | 16 it. | 20 it. |",
            "|---|---|---|---|---|"]
    for bits in (12, 16, 20):
        errs = [float((cordic_sin(theta, n, bits) - torch.sin(theta)).abs().max())
                for n in (8, 12, 16, 20)]
        rows.append(f"| {bits} fractional bits | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
    g = torch.Generator().manual_seed(0)
    num = torch.rand(200_000, generator=g, dtype=torch.float64) * 4 - 2
    den = (torch.rand(200_000, generator=g, dtype=torch.float64) * 0.99 + 0.01) * 160
    keep = num.abs() < den
    rows += ["", "| shift-subtract division, max abs error (quotients in (-1, 1)) | value |",
             "|---|---|"]
    for bits in (12, 16, 20):
        q = from_fixed(fixed_div(to_fixed(num[keep], bits), to_fixed(den[keep], bits), bits), bits)
        rows.append(f"| {bits} fractional bits (vs the float quotient of the unrounded inputs) | "
                    f"{float((q - num[keep] / den[keep]).abs().max()):.1e} |")
    x = torch.logspace(-6, 6, 1_000_001, dtype=torch.float64)
    rows += ["", "| log2pwl, max abs error of log2 (ln: x 0.693) | 1 seg. | 2 seg. | 4 seg. | "
             "8 seg. |", "|---|---|---|---|---|",
             "| exponent + piecewise-linear mantissa | " + " | ".join(
                 f"{float((log2_pwl(x, k) - torch.log2(x)).abs().max()):.4f}"
                 for k in (1, 2, 4, 8)) + " |"]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "approx-sinc"))
    ap.add_argument("--data", default=None, help="default: the run's data root")
    a = ap.parse_args()

    t0 = time.time()
    ckpt = resolve_checkpoint(a.run)
    exact, cfg, labels = load_model(ckpt)
    state = read_checkpoint(ckpt)
    base = dict(state.get("arch") or arch_of(cfg, len(labels)))
    models, records = [], []
    for name, spec in ARMS.items():
        if spec is None:
            models.append(exact)
            records.append({})
            continue
        spec = approx_spec(spec)
        model = build_from_arch({**base, "approx": spec})
        model.load_state_dict(state["model"])
        models.append(model.eval())
        records.append(approximation_errors(exact, model, spec))
    root = a.data or cfg.data.root
    accs, n = validation_accuracy(models, cfg, labels, str(root))

    ref = accs[0]
    rows = ["| arm | filter taps: max abs error | log: max abs error (ln) | val acc | "
            "change (points) |", "|---|---|---|---|---|"]
    for (name, _), rec, acc in zip(ARMS.items(), records, accs):
        tap = rec.get("filter_max_abs_err")
        lg = rec.get("log_max_abs_err")
        rows.append(f"| {name} | {'-' if tap is None else f'{tap:.1e}'} | "
                    f"{'-' if lg is None else f'{lg:.4f}'} | {100 * acc:.2f}% | "
                    f"{100 * (acc - ref):+.2f} |")
    best = (state.get("best") or {})
    text = "\n".join([
        "# SincConv with hardware arithmetic (kwskit approx)", "",
        f"Run `{Path(a.run).name}`: {base['name']}, {len(labels)} labels, checkpoint "
        f"{ckpt.name} (epoch {state.get('epoch')}, val acc at training "
        f"{best.get('val_acc', float('nan')):.4f}); {n} validation clips of "
        f"`{Path(str(root)).name}`. Same weights for every row, no retraining. Fixed point: 16 "
        "fractional bits (int64 tensors); CORDIC sine (rotation mode), shift-subtract division; "
        "log(1 + |x|) = ln 2 x (exponent + piecewise-linear mantissa). Filter-tap error: the "
        "largest difference over the 40 x 101 windowed taps (the exact taps peak at 1).", "",
        *rows, "",
        "## The approximations on their own", "",
        *function_errors(), "",
        f"Produced by `KWSKIT_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/approx_table.py` on "
        f"{datetime.date.today().isoformat()} ({time.time() - t0:.0f} s, one thread).", ""])
    write_text(TABLE, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
