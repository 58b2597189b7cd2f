"""``kwskit distill``, ``quantize``, ``prune``, ``approx`` and ``nas``: arguments and commands.

``add_parsers(subparsers)`` adds the sub-commands to the ``kwskit`` parser; heavy imports
(torch, onnx, the model) happen only when one of them runs. Every command writes a new run
directory (``--out``), so its result is evaluated, streamed and exported like any other run.
"""

from __future__ import annotations


def add_parsers(sub) -> None:
    _add_distill(sub)
    _add_quantize(sub)
    _add_prune(sub)
    _add_approx(sub)
    _add_nas(sub)


# --- distill -------------------------------------------------------------------------------

def _add_distill(sub) -> None:
    d = sub.add_parser("distill", help="train a student model with a trained teacher's guidance "
                       "(soft targets, feature maps, attention over time)")
    d.add_argument("--teacher", required=True, metavar="RUN",
                   help="teacher run directory or checkpoint (its labels must be the student's)")
    d.add_argument("--config", metavar="YAML",
                   help="the student's YAML recipe (default: built-in defaults)")
    d.add_argument("--out", required=True, metavar="RUN", help="new run directory for the student")
    d.add_argument("--data", metavar="DIR", help="data set folder (default: the student "
                   "config's data.root, else the teacher's)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a student config value (e.g. model.args.hidden=16)")
    d.add_argument("--budget-epochs", type=int, metavar="E",
                   help="train E epochs with the recipe's lr schedule compressed into them")
    d.add_argument("--temperature", type=float, default=4.0, metavar="T",
                   help="soft-target temperature T (Hinton et al. 2015)")
    d.add_argument("--alpha", type=float, default=0.5, metavar="A",
                   help="weight of the soft-target KL; 1 - alpha weighs the labels' "
                   "cross-entropy (0: no logit distillation)")
    d.add_argument("--feature-weight", type=float, default=0.0, metavar="W",
                   help="weight of the FitNets feature MSE (0 = off)")
    d.add_argument("--attention-weight", type=float, default=0.0, metavar="W",
                   help="weight of the KL between teacher and student attention over time "
                   "(0 = off)")
    d.add_argument("--student-layer", default="backbone.body", metavar="NAME",
                   help="student module whose output the feature MSE compares (backbone.body: "
                   "the last feature map before the classifier's pooling)")
    d.add_argument("--teacher-layer", default="backbone.body", metavar="NAME",
                   help="teacher module whose output the feature MSE compares")
    d.add_argument("--tracking-uri", help="MLflow tracking URI (default: a local store in the run)")
    d.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    d.set_defaults(func=_distill)


def _distill(a):
    from kwskit.compress.distill import distill
    from kwskit.config import budget_overrides, load_config

    overrides = list(a.set or [])
    if a.budget_epochs:  # before --set, so an explicit --set still wins
        overrides[:0] = budget_overrides(load_config(a.config), a.budget_epochs)
    cfg = load_config(a.config, overrides)
    result = distill(cfg, a.out, a.teacher, data=a.data, temperature=a.temperature,
                     alpha=a.alpha, feature_weight=a.feature_weight,
                     attention_weight=a.attention_weight, student_layer=a.student_layer,
                     teacher_layer=a.teacher_layer, quiet=False, track=not a.no_mlflow,
                     tracking_uri=a.tracking_uri)
    best = result["best"] or {}
    if best.get("val_acc") is not None:
        teacher = result["distill"]["teacher_val_acc"]
        than = f" (teacher {teacher:.4f})" if teacher is not None else ""
        print(f"best val_acc {best['val_acc']:.4f} at epoch {best['epoch']}{than}")
    print(f"run: {result['run']}")
    return 0


# --- quantize (post-training) and quantization-aware training -------------------------------

def _add_quantize(sub) -> None:
    q = sub.add_parser("quantize", help="post-training quantization: int8 / fp16 ONNX models, "
                       "or weights rounded to n bits (--qat: quantization-aware training)")
    q.add_argument("run", help="trained run directory or checkpoint")
    q.add_argument("--out", required=True, help="new run directory (new or empty folder)")
    q.add_argument("--mode", default="int8", choices=["int8", "fp16", "weights"],
                   help="int8: static int8 ONNX models (conv / linear weights per channel, "
                   "their activations calibrated); fp16: half-precision ONNX models; weights: "
                   "a PyTorch run with its weights rounded to --bits per output channel")
    q.add_argument("--bits", type=int, default=8,
                   help="weight bits, 1-8 (--mode weights, --qat)")
    q.add_argument("--data", help="data set for the calibration and the validation accuracy "
                   "(default: the run's own)")
    q.add_argument("--calib-clips", type=int, default=500,
                   help="int8: training clips to calibrate activation ranges on")
    q.add_argument("--chunk-ms", type=float, default=10.0,
                   help="int8/fp16: audio per call of the streaming model (ms)")
    q.add_argument("--window-s", type=float, default=1.0,
                   help="int8/fp16: the streaming model's classifier window (s)")
    q.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    q.add_argument("--seed", type=int, default=0, help="which calibration clips (seed)")
    _add_qat_args(q)
    q.set_defaults(func=_quantize)


def _quantize(a):
    if getattr(a, "qat", False):
        return _qat(a)
    from kwskit.compress.quantize import format_summary, quantize_run

    summary = quantize_run(a.run, a.out, mode=a.mode, bits=a.bits, data=a.data,
                           calib_clips=a.calib_clips, chunk_ms=a.chunk_ms,
                           window_s=a.window_s, which=a.checkpoint, seed=a.seed)
    print(format_summary(summary))
    return 0


def _add_qat_args(q) -> None:
    """The ``--qat`` options of ``kwskit quantize``."""
    import argparse

    g = q.add_argument_group("quantization-aware training (--qat)")
    g.add_argument("--qat", action="store_true",
                   help="fine-tune the run with n-bit weights and activations simulated "
                   "(BatchNorm folded, straight-through gradients) into a new PyTorch run; "
                   "--mode is then ignored")
    g.add_argument("--weight-bits", dest="bits", type=int, default=argparse.SUPPRESS,
                   metavar="N", help="--qat: weight bits per output channel, 1-8 "
                   "(same as --bits; 1 = sign x mean|w|)")
    g.add_argument("--act-bits", type=int, default=8, metavar="N",
                   help="--qat: activation bits per tensor, 4-8")
    g.add_argument("--first-last-bits", type=int, default=8, metavar="N",
                   help="--qat: weight bits of the first and last layer (0 = --weight-bits)")
    g.add_argument("--epochs", type=int, default=3, help="--qat: fine-tuning epochs")
    g.add_argument("--lr", type=float, default=None,
                   help="--qat: peak learning rate of the cosine schedule "
                   "(default: the run's optim.lr; a tenth of it at 8/8 bits)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="--qat: override a value of the run's config (e.g. train.batch_size=64)")
    g.add_argument("--tracking-uri", help="--qat: MLflow tracking URI (default: a local store "
                   "in the run)")
    g.add_argument("--no-mlflow", action="store_true", help="--qat: do not log to MLflow")


def _qat(a):
    from kwskit.compress.qat import qat_run

    result = qat_run(a.run, a.out, weight_bits=a.bits, act_bits=a.act_bits,
                     first_last_bits=a.first_last_bits or None, epochs=a.epochs, lr=a.lr,
                     data=a.data, which=a.checkpoint, calib_clips=a.calib_clips,
                     overrides=a.set, quiet=False, track=not a.no_mlflow,
                     tracking_uri=a.tracking_uri)
    r = result["qat"]
    name = f"w{r['spec']['weight_bits']}a{r['spec']['act_bits']}"
    parts = [f"{label} {r[key]:.4f}" for label, key in (
        ("float", "float_val_acc"), (f"{name} rounded, no training", "rounded_val_acc"),
        (f"{name} QAT", "qat_val_acc")) if r.get(key) is not None]
    if parts:
        print("val_acc: " + ", ".join(parts))
    print(f"run: {result['run']}")
    return 0


# --- prune ---------------------------------------------------------------------------------

def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="structured pruning: remove whole channels (torch-pruning), "
                       "fine-tune, write a smaller run")
    p.add_argument("run", help="trained run directory or checkpoint")
    p.add_argument("--sparsity", required=True, metavar="S",
                   help="share of the backbone's MACs to remove, between 0 and 1 (e.g. 0.5); "
                   "parameters shrink by about as much")
    p.add_argument("--out", required=True, help="new run directory (new or empty folder)")
    p.add_argument("--finetune-epochs", type=int, default=3, metavar="N",
                   help="fine-tuning epochs after each pruning step (0: none)")
    p.add_argument("--steps", type=int, default=1, metavar="K",
                   help="prune in K steps to S/K, 2S/K, ..., S, fine-tuning after each")
    p.add_argument("--importance", default="l1", choices=["l1", "bn", "taylor"],
                   help="channel ranking: l1 weight magnitude, bn BatchNorm scale (network "
                   "slimming), taylor first-order Taylor |w * grad|")
    p.add_argument("--round-to", type=int, default=4, metavar="N",
                   help="keep a multiple of N channels in every pruned layer: ONNX Runtime's "
                   "convolutions are much slower at other widths (1: exact widths)")
    p.add_argument("--data", help="data set for fine-tuning and validation (default: the run's own)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of the fine-tune's cosine schedule (default: the "
                   "run's optim.lr)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a value of the run's config for fine-tuning "
                   "(e.g. train.batch_size=64)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    p.set_defaults(func=_prune)


def _prune(a):
    from kwskit.compress.prune import format_summary, prune_run

    report = prune_run(a.run, a.out, sparsity=a.sparsity, steps=a.steps,
                       finetune_epochs=a.finetune_epochs, importance=a.importance, data=a.data,
                       which=a.checkpoint, lr=a.lr, round_to=a.round_to, overrides=a.set,
                       quiet=False)
    print(format_summary(report))
    return 0


# --- approx (hardware approximations) ------------------------------------------------------

def _add_approx(sub) -> None:
    p = sub.add_parser("approx", help="compute a SincConv model's sinc filters (CORDIC sine, "
                       "shift-subtract division) and log compression (exponent + linear "
                       "mantissa) as hardware would; no training")
    p.add_argument("run", help="trained SincConv run directory or checkpoint")
    p.add_argument("--out", required=True, help="new run directory (new or empty folder)")
    p.add_argument("--sinc", choices=["exact", "cordic"],
                   help="sinc filter taps: float (exact) or fixed-point CORDIC (default cordic)")
    p.add_argument("--log", choices=["exact", "log2pwl"],
                   help="log compression: float (exact) or exponent + piecewise-linear mantissa "
                   "(default log2pwl)")
    p.add_argument("--cordic-iters", type=int, metavar="N",
                   help="CORDIC iterations, 1-32 (default 16)")
    p.add_argument("--frac-bits", type=int, metavar="B",
                   help="fractional bits of the fixed-point filter arithmetic, 10-24 (default 16)")
    p.add_argument("--log-segments", type=int, metavar="K",
                   help="linear pieces of the log's mantissa, 1-64 (default 1: log2(1+u) ~ u)")
    p.add_argument("--data", help="data set for the validation accuracy before/after "
                   "(default: the run's own)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="which checkpoint")
    p.set_defaults(func=_approx)


def _approx(a):
    from kwskit.compress.approx import approximate_run, format_summary

    record = approximate_run(a.run, a.out, sinc=a.sinc, log=a.log, cordic_iters=a.cordic_iters,
                             frac_bits=a.frac_bits, log_segments=a.log_segments, data=a.data,
                             which=a.checkpoint)
    print(format_summary(record))
    return 0


# --- nas (architecture search) -------------------------------------------------------------

def parse_amount(text: str, what: str) -> float:
    """'5M', '2.5e6', '500K' -> a positive float; KwsError naming ``what`` otherwise."""
    from kwskit.errors import KwsError

    t = str(text).strip().upper()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(t[-1:], 1.0)
    try:
        v = float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        v = float("nan")
    if not v > 0:
        raise KwsError(f"{what}: expected a positive amount such as 5M, 2.5e6 or 800K, got {text!r}")
    return v


def _add_nas(sub) -> None:
    p = sub.add_parser("nas", help="architecture search (ProxylessNAS) of an MBConv model under "
                       "a MACs or latency budget; writes the found model's config")
    p.add_argument("--out", required=True, metavar="RUN", help="new run directory for the search")
    p.add_argument("--data", metavar="DIR", help="data set folder (default: the config's data.root, "
                   "else the built-in synthetic set)")
    p.add_argument("--labels", help="label set (mini10, gsc12, 'yes,no,...')")
    p.add_argument("--config", metavar="YAML", help="training recipe of the supernet and of the "
                   "found model (default: kwskit.compress.nas.RECIPE, as configs/mbconv_net.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--target-macs", metavar="N", help="MACs per 1-s clip to aim at, e.g. 2.5M")
    budget.add_argument("--target-latency-us", metavar="US", help="CPU latency per clip to aim "
                        "at, microseconds, one thread (each op is timed on this machine)")
    p.add_argument("--beta", type=float, default=8.0, help="exponent of the cost term: larger "
                   "pulls the expected cost harder towards the target (0: ignore cost)")
    p.add_argument("--alpha", type=float, default=1.0, help="scale of the regularised loss")
    p.add_argument("--loss", choices=["target", "mul-log"], default="target",
                   help="target: the cost pulls only above the target (a soft budget); mul-log: "
                   "001's CE * (log E / log target)^beta, where the target only scales the "
                   "loss and beta alone sets the trade-off")
    p.add_argument("--width-mult", type=float, default=1.0, metavar="W",
                   help="every channel count times W")
    p.add_argument("--n-mfcc", type=int, metavar="N", help="MFCCs of the front-end (default: "
                   "the config's)")
    p.add_argument("--epochs", type=int, default=6, help="search epochs (weights and architecture)")
    p.add_argument("--warmup-epochs", type=int, default=3,
                   help="weight-only epochs before the architecture starts to move")
    p.add_argument("--arch-lr", type=float, default=0.02, help="Adam learning rate of alpha "
                   "(001: 4e-3 over ~100x more steps than this default search)")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="share of the training clips kept for architecture steps")
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    p.set_defaults(func=_nas)


def _nas_config(a):
    from kwskit.config import load_config

    overrides = list(a.set or [])
    if a.labels:
        overrides.append(f"data.labels={a.labels}")
    if a.n_mfcc:
        overrides.append(f"frontend.n_mfcc={a.n_mfcc}")
    if a.config:
        return load_config(a.config, overrides)
    from kwskit.compress.nas import default_config

    return default_config(overrides)


def _nas(a):
    from kwskit.compress.nas import SearchSettings, search
    from kwskit.errors import KwsError

    if not a.resume and not (a.target_macs or a.target_latency_us):
        raise KwsError("nas: give a budget: --target-macs N (e.g. 2.5M) or --target-latency-us US")
    if a.target_latency_us:
        target, cost = parse_amount(a.target_latency_us, "--target-latency-us"), "latency"
    else:
        target, cost = (parse_amount(a.target_macs, "--target-macs"), "macs") if a.target_macs \
            else (1.0, "macs")  # resume: the saved settings win
    settings = SearchSettings(target=target, cost=cost, loss=a.loss, alpha=a.alpha, beta=a.beta,
                              arch_lr=a.arch_lr, warmup_epochs=a.warmup_epochs, epochs=a.epochs,
                              holdout=a.holdout, width_mult=a.width_mult)
    result = search(_nas_config(a), a.out, settings, data=a.data, resume=a.resume)
    found = result["found"]
    unit = "MACs" if result["settings"]["cost"] == "macs" else "us"
    print(f"found: {' '.join(found['ops'])}")
    print(f"cost {found['cost']:,.0f} {unit} (target {result['settings']['target']:,.0f}), "
          f"{found['params']:,} params, search {result['search_seconds'] / 60:.1f} min")
    print(f"train it: kwskit train --config {a.out}/found.yaml --out RUN")
    return 0
