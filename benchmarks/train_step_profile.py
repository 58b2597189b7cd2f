"""Where one training step's time goes, and what the machine gives for more processes.

    python benchmarks/train_step_profile.py [--models bcresnet1 bcresnet3] [--threads 2]
        [--batch 100] [--steps 20] [--micro 50 20]
        [--out benchmarks/results/train_step_profile.md]

For each model: forward + cross-entropy + backward + SGD on a fixed synthetic batch of log-mel
features (the network step ``kwskit train`` runs, without the data path and the front-end),

- wall time per step (median and minimum over ``--steps`` steps after warm-up), minor page
  faults and system time per step, with glibc's default allocator settings and with
  ``mallopt`` keeping freed memory (kwskit.train.allocator, which ``kwskit train`` uses on a
  CPU): the system time the page faults cost; and, on a CPU with native bf16 units, under the
  bfloat16 autocast that ``train.amp: auto`` trains with there (the profile below uses it too);
- torch.profiler's self CPU time grouped by what the op is (convolution forward / backward,
  kwskit's fused kernels, BatchNorm forward / backward, matmul, element-wise, optimiser,
  other), and the five costliest
  (op, input shape) pairs;
- the same step in one thread, and two one-thread processes side by side (each its own
  batch): how far two cores are from twice one, which bounds any data-parallel split;
- the same batch in one thread as micro-batches of ``--micro`` clips with gradient
  accumulation (the same loss, but BatchNorm's statistics per pass; smaller activations per
  pass, more passes).

Prints markdown and writes it to ``--out``. Synthetic input, so no data set is needed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kwskit.fsutil import write_text  # noqa: E402
from kwskit.models.registry import create_model  # noqa: E402
from kwskit.train.allocator import keep_freed_memory  # noqa: E402
from kwskit.train.loop import cpu_has_bf16  # noqa: E402

GROUPS = (  # (group, predicate on the aten op name), first match wins
    # kwskit.layers.fused: BC-ResNet's norms and residual ReLU as C++ kernels in CPU training
    ("fused BatchNorm / SubSpectralNorm (kwskit kernels)", lambda n: "_SubBandNorm" in n),
    ("fused residual + ReLU (kwskit kernels)", lambda n: "_ResidualReLU" in n),
    ("convolution backward", lambda n: "convolution_backward" in n),
    ("convolution forward", lambda n: "convolution" in n),
    ("BatchNorm backward", lambda n: "batch_norm_backward" in n),
    ("BatchNorm forward", lambda n: "batch_norm" in n),
    ("optimiser", lambda n: "Optimizer" in n or "_foreach" in n),
    # 1x1 and frequency-only depthwise convolutions train as matmuls on a CPU
    ("matmul (1x1 and frequency convolutions)", lambda n: n in ("aten::bmm", "aten::mm")),
    ("element-wise (add, ReLU, SiLU, mul, pad, mean...)",
     lambda n: any(k in n for k in ("add", "threshold", "clamp", "silu", "mul", "div", "relu",
                                    "pad", "mean", "sum", "copy", "fill", "bernoulli"))),
)


def make_step(model_name: str, batch: int, micro: int = 0, bf16: bool = False):
    """One SGD step on a fixed batch; ``micro`` > 0 runs it as passes of ``micro`` clips
    whose gradients add up (BatchNorm normalises each pass by its own statistics); ``bf16``
    runs forward under bfloat16 autocast as ``train.amp=auto`` does on a CPU with bf16 units."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=12).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(batch, 1, 40, 101), torch.randint(0, 12, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        for xs, ys in zip(x.split(micro or batch), y.split(micro or batch)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(xs)
            (F.cross_entropy(logits.float(), ys) * (len(ys) / batch)).backward()
        opt.step()
    return step


def time_steps(step, steps: int) -> dict:
    for _ in range(3):
        step()
    r0, ts = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts),
            "page_faults": (r1.ru_minflt - r0.ru_minflt) / steps,
            "sys_ms": 1e3 * (r1.ru_stime - r0.ru_stime) / steps}


def profile_groups(step, steps: int = 5) -> tuple[dict, list]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    groups: dict[str, float] = {}
    rows = prof.key_averages(group_by_input_shape=True)
    for ev in rows:
        # aten ops, the optimiser, and kwskit's kernels (called directly, not through aten)
        if not (ev.key.startswith(("aten::", "_SubBandNorm", "_ResidualReLU"))
                or "Optimizer" in ev.key):
            continue
        name = next((g for g, match in GROUPS if match(ev.key)), "other")
        groups[name] = groups.get(name, 0.0) + ev.self_cpu_time_total / 1e3 / steps
    top = sorted(rows, key=lambda e: -e.self_cpu_time_total)[:5]
    return groups, [(e.key, str(e.input_shapes[:3]), e.self_cpu_time_total / 1e3 / steps)
                    for e in top]


def child(a) -> None:
    """One timing in this process (``--child``): prints one JSON line."""
    torch.set_num_threads(a.threads)
    if a.keep_memory and not keep_freed_memory():
        raise SystemExit("--keep-memory: this C library has no glibc mallopt")
    micro = a.micro[0] if a.micro else 0
    print(json.dumps(time_steps(make_step(a.models[0], a.batch, micro, a.bf16), a.steps)))


def spawn(model: str, threads: int, batch: int, steps: int, keep: bool, n: int = 1,
          micro: int = 0, bf16: bool = False) -> list[dict]:
    """``n`` child processes side by side; their results."""
    cmd = [sys.executable, __file__, "--child", "--models", model, "--threads", str(threads),
           "--batch", str(batch), "--steps", str(steps), "--micro", str(micro)]
    cmd += ["--keep-memory"] if keep else []
    cmd += ["--bf16"] if bf16 else []
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def report(model: str, a) -> str:
    lines = [f"### {model}, batch {a.batch}", "",
             "| setting | ms per step (median / min) | clips/s | page faults per step | "
             "system ms per step |", "|---|---|---|---|---|"]

    def row(label, r, clips):
        lines.append(f"| {label} | {r['median_ms']:.0f} / {r['min_ms']:.0f} | "
                     f"{clips / r['median_ms'] * 1e3:.0f} | {r['page_faults']:.0f} | "
                     f"{r['sys_ms']:.1f} |")
    for keep in (False, True):  # back to back, so that both see about the same load
        row(f"{a.threads} threads, glibc malloc {'keeping freed memory' if keep else 'default'}",
            spawn(model, a.threads, a.batch, a.steps, keep)[0], a.batch)
    bf16 = cpu_has_bf16()
    if bf16:
        for keep in (False, True):
            row(f"{a.threads} threads, bfloat16 autocast (train.amp=auto on this CPU), glibc "
                f"malloc {'keeping freed memory (as kwskit train)' if keep else 'default'}",
                spawn(model, a.threads, a.batch, a.steps, keep, bf16=True)[0], a.batch)
    row("1 thread", spawn(model, 1, a.batch, a.steps, True)[0], a.batch)
    pair = spawn(model, 1, a.batch, a.steps, True, n=2)
    worst = max(pair, key=lambda r: r["median_ms"])
    row("two 1-thread processes side by side (slower one; clips/s of both)", worst, 2 * a.batch)
    for micro in a.micro:
        row(f"1 thread, micro-batches of {micro} with gradient accumulation",
            spawn(model, 1, a.batch, a.steps, True, micro=micro)[0], a.batch)

    torch.set_num_threads(a.threads)
    keep_freed_memory()  # as kwskit train does
    groups, top = profile_groups(make_step(model, a.batch, bf16=bf16))
    total = sum(groups.values())
    lines += ["", f"torch.profiler, {a.threads} threads, {'bf16 autocast' if bf16 else 'float32'}, "
              f"self CPU time per step "
              f"(all threads: {total:.0f} ms):", "", "| part | ms | share |", "|---|---|---|"]
    for name, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {ms:.0f} | {100 * ms / total:.0f}% |")
    lines += ["", "| costliest op | input shapes (first three) | ms per step |", "|---|---|---|"]
    lines += [f"| {k} | {s} | {ms:.1f} |" for k, s, ms in top]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["bcresnet1", "bcresnet3"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--micro", type=int, nargs="*", default=[50, 20],
                    help="micro-batch sizes to time in one thread (gradient accumulation)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_step_profile.md"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--keep-memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    text = "\n\n".join(report(m, a) for m in a.models) + "\n"
    print(text)
    write_text(Path(a.out), text)


if __name__ == "__main__":
    main()
