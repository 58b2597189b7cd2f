"""Structured pruning: remove whole channels / filters from a trained run (``kwskit prune``).

The pruned model is physically smaller -- fewer parameters, fewer MACs, lower latency -- not a
masked copy of the original. torch-pruning (Fang et al. 2023, "DepGraph: Towards Any
Structural Pruning", arXiv:2301.12900) finds the groups of coupled channels: a conv's output
channels together with the BatchNorm after it, the depthwise convs that must follow them, the
input channels of every consumer, and all members of a residual sum (BC-ResNet stages,
TC-ResNet / MatchboxNet shortcuts). Each group is ranked by one importance criterion and the
least important channels are removed from every member at once.

Importance criteria (``--importance``), each computed over the whole group:

- ``l1``: L1 norm of the group's weights (magnitude; Li et al. 2017, arXiv:1608.08710).
- ``bn``: |gamma| of the group's BatchNorm scales (network slimming; Liu et al. 2017,
  arXiv:1708.06519). A group without BatchNorm cannot be ranked and is kept.
- ``taylor``: |w * dL/dw|, the first-order Taylor estimate of the loss change when the
  weights are removed (Molchanov et al. 2019, arXiv:1906.10771), with gradients of the
  cross-entropy summed over ``TAYLOR_BATCHES`` training batches.

``DEFAULT_IMPORTANCE`` is ``l1``, chosen by measurement (benchmarks/results/prune.md; 50% of
the MACs of DS-CNN-S and BC-ResNet-1 on gsc-dev): after a 3-epoch fine-tune l1 and taylor tie
(l1 89.8% vs 89.1% on BC-ResNet-1, 87.3% vs 88.3% on DS-CNN-S), bn trailed both after one
epoch (83.4% / 84.2%), and l1 needs neither data nor gradients to rank.

**Sparsity** is the fraction of the backbone's MACs (one 1-s clip) removed. Every prunable
group loses the same share of its channels (torch-pruning's local pruning); that share is
found by bisection so the MACs land at or just under the target (in steps: whole channels go).
Parameters shrink by about the same fraction (both scale with in x out channels).

**Widths** are rounded down to multiples of ``DEFAULT_ROUND_TO`` = 4 (``--round-to``):
ONNX Runtime's CPU convolutions take a much slower path for other widths (DS-CNN-S pruned to
54 or 42 channels ran 2-2.4x slower than the unpruned 64; 52 as fast, 40 and 28 faster), at
the price of coarser steps and a floor of 4 channels per group.

**Iterative** pruning takes K steps to sparsities S/K, 2S/K, ..., S, each followed by a
fine-tune (``kwskit.train.loop.fit`` started from the pruned weights); the last step's run is
the output and ``prune.json`` in it records every step. For the same training budget one step
measured better (75% of MACs: 3 steps x 1 epoch ended ~3 points below 1 step x 3 epochs on
both models), so 1 is the default.

What is kept whole: the front-end (and SincConv's learnable filterbank), the first layer's
input (the features), the classifier's outputs, recurrent layers (a GRU keeps its hidden size;
its input is narrowed with the conv before it) and attention pooling. Models whose layers
reshape channels in ways torch-pruning cannot follow are refused with the reason
(``check_prunable``: KWT, Lambda-ResNet, SincConv+GDSConv). The pruned shapes go into the arch
spec under ``"pruned"`` (kwskit.models.pruned), so the run reloads, streams, exports and
resumes as it is.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kwskit.errors import KwsError

IMPORTANCES = ("l1", "bn", "taylor")
DEFAULT_IMPORTANCE = "l1"
DEFAULT_ROUND_TO = 4
TAYLOR_BATCHES = 8
BISECT_ITERS = 10


# ---------------------------------------------------------------------------- arguments

def parse_sparsity(value) -> float:
    """``--sparsity`` as a float in (0, 1): the share of MACs to remove."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise KwsError(f"--sparsity: expected a number between 0 and 1 (the share of MACs to "
                       f"remove, e.g. 0.5), got {value!r}") from None
    if not math.isfinite(s) or not 0.0 < s < 1.0:
        raise KwsError(f"--sparsity: must be strictly between 0 and 1 (the share of MACs to "
                       f"remove), got {value!r}")
    return s


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise KwsError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return value


def check_importance(kind: str) -> str:
    if kind not in IMPORTANCES:
        raise KwsError(f"--importance: one of {', '.join(IMPORTANCES)}, got {kind!r}")
    return kind


# ---------------------------------------------------------------------------- what can be pruned

def _unsupported() -> dict[type, str]:
    """Layer types torch-pruning's dependency graph cannot follow, with the reason."""
    from kwskit.layers.lambda_layer import LambdaLayer1d
    from kwskit.models.kwt import KWTEncoder
    from kwskit.models.sincconv import ChannelShuffle

    return {
        KWTEncoder: "self-attention splits the width into heads and ties it to the class token "
                    "and position embeddings",
        LambdaLayer1d: "lambda layers fold channels into heads and keys (einsum), which the "
                       "dependency graph cannot follow",
        ChannelShuffle: "the channel shuffle between grouped pointwise convs permutes channels "
                        "across groups, which the dependency graph cannot follow",
    }


def check_prunable(backbone: nn.Module, name: str) -> None:
    """KwsError naming the model and the reason when it cannot be pruned."""
    for kind, why in _unsupported().items():
        if any(isinstance(m, kind) for m in backbone.modules()):
            raise KwsError(f"{name}: cannot be pruned: {why} ({kind.__name__}); "
                           "prunable: DS-CNN, BC-ResNet, TC-ResNet, MatchboxNet, Res15, "
                           "SincConv+DSConv, CRNN (conv only)")


def _tp():
    try:
        import torch_pruning
    except ModuleNotFoundError:
        raise KwsError("kwskit prune needs torch-pruning: pip install 'kwskit[compress]'") from None
    return torch_pruning


def _pruners(tp) -> dict:
    """torch-pruning pruners for kwskit layers it does not know (by layer type)."""
    from kwskit.layers import SubSpectralNorm
    from kwskit.layers.recurrent import StreamGRU
    from kwskit.layers.sinc import SincConv1d

    class SubSpectralNormPruner(tp.BasePruningFunc):
        """Channel c owns BatchNorm features c*sub_bands ... c*sub_bands + sub_bands - 1."""

        def prune_out_channels(self, layer, idxs):
            gone = sorted(set(int(i) for i in idxs))
            tp.prune_batchnorm_out_channels(
                layer.bn, [c * layer.sub_bands + b for c in gone for b in range(layer.sub_bands)])
            layer.channels -= len(gone)
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            return layer.channels

        get_in_channels = get_out_channels

    class GRUInputPruner(tp.BasePruningFunc):
        """Narrows a StreamGRU's input; its hidden size stays (the layer is also ignored)."""

        def prune_out_channels(self, layer, idxs):
            raise RuntimeError("a GRU's hidden units are kept")

        def prune_in_channels(self, layer, idxs):
            gru, gone = layer.gru, set(int(i) for i in idxs)
            keep = [i for i in range(gru.input_size) if i not in gone]
            gru.weight_ih_l0 = nn.Parameter(gru.weight_ih_l0.data[:, keep].clone())
            gru.input_size = len(keep)
            return layer

        def get_out_channels(self, layer):
            return layer.hidden_size

        def get_in_channels(self, layer):
            return layer.gru.input_size

    class KeptPruner(tp.BasePruningFunc):
        """A layer kept whole (the SincConv filterbank): listed as ignored, never pruned."""

        def prune_out_channels(self, layer, idxs):
            raise RuntimeError(f"{type(layer).__name__} is kept whole")

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            return getattr(layer, "out_channels", None)

        def get_in_channels(self, layer):
            return getattr(layer, "in_channels", None)

    return {SubSpectralNorm: SubSpectralNormPruner(), StreamGRU: GRUInputPruner(),
            SincConv1d: KeptPruner()}


@contextlib.contextmanager
def _traceable(backbone: nn.Module):
    """Simpler stand-ins for tracing only: torch-pruning follows autograd from each layer's
    output, and the GRU's gates and SubSpectralNorm's per-band reshapes would pull their
    internals into the graph. The stand-ins map input to output in one op with the layer's
    channel counts (the GRU: a 1x1 conv with its detached input weights). Attention pooling,
    kept whole, is traced as a mean over time: its Linear layers on (batch, frames, channels)
    would make torch-pruning give up mapping the frequency flatten before a GRU (CRNN)."""
    from kwskit.layers import SubSpectralNorm
    from kwskit.layers.recurrent import AttentionPool, StreamGRU

    patched = []
    for m in backbone.modules():
        if isinstance(m, StreamGRU):
            w = m.gru.weight_ih_l0[: m.hidden_size].detach().unsqueeze(-1)
            m.forward = (lambda w: lambda x: F.conv1d(x, w))(w)
        elif isinstance(m, SubSpectralNorm):
            m.forward = lambda x: x * 1.0
        elif isinstance(m, AttentionPool):
            m.forward = lambda x: x.mean(-1)
        else:
            continue
        patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _input_layers(backbone: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """Grouped convs that read the model input directly: their groups are tied to the
    features' channels, which cannot be pruned (MatchboxNet's first depthwise conv)."""
    found = []

    def hook(module, args, _out):
        conv = getattr(module, "conv", module)
        if args and args[0] is example and isinstance(conv, nn.modules.conv._ConvNd) \
                and conv.groups > 1:
            found.append(conv)

    handles = [m.register_forward_hook(hook) for m in backbone.modules()]
    try:
        with torch.no_grad(), _traceable(backbone):
            backbone(example)
    finally:
        for h in handles:
            h.remove()
    return found


def _kept_layers(backbone: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """What torch-pruning must leave whole (module doc)."""
    from kwskit.layers.recurrent import StreamGRU
    from kwskit.layers.sinc import SincConv1d

    kept = [m for m in backbone.head.modules() if isinstance(m, nn.Linear)]
    kept += [m for m in backbone.modules() if isinstance(m, (StreamGRU, SincConv1d))]
    if any(True for _ in backbone.pool.parameters()):  # attention pooling
        kept.append(backbone.pool)
    return kept + _input_layers(backbone, example)


def trace_input(backbone: nn.Module) -> torch.Tensor:
    """A short random input for tracing: one output frame (``frame_stride`` input frames).
    One frame keeps a frequency flatten (CRNN) a plain reshape torch-pruning can map."""
    t = int(backbone.frame_stride)
    f = int(backbone.in_features)
    shape = {"2d": (1, 1, f, t), "1d": (1, f, t), "wave": (1, 1, t)}[backbone.input_kind]
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- pruning

def importance_of(kind: str):
    """The torch-pruning importance for ``--importance`` (module doc)."""
    tp = _tp()
    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "bn":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


@contextlib.contextmanager
def _pruner(backbone: nn.Module, ratio: float, importance, name: str, round_to: int = 1):
    """torch-pruning's MetaPruner over ``backbone`` (eval mode while it lives); its errors
    become one KwsError naming the model."""
    tp = _tp()
    example = trace_input(backbone)
    was_training = backbone.training
    backbone.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch-pruning's notes on unwrapped parameters
            kept = _kept_layers(backbone, example)
            with _traceable(backbone):
                pruner = tp.pruner.MetaPruner(
                    backbone, example, importance=importance, pruning_ratio=float(ratio),
                    ignored_layers=kept, customized_pruners=_pruners(tp),
                    round_to=round_to if round_to > 1 else None)
            yield pruner
    except KwsError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise KwsError(f"{name}: torch-pruning could not prune it ({type(exc).__name__}: "
                       f"{first[:160]})") from exc
    finally:
        backbone.train(was_training)


def prune_channels(backbone: nn.Module, ratio: float, importance, name: str = "model",
                   round_to: int = 1) -> None:
    """Remove ``ratio`` of the channels of every prunable group of ``backbone``, in place,
    ranked by ``importance`` (a torch-pruning importance; Taylor needs ``.grad`` set); with
    ``round_to`` > 1 a group keeps a multiple of that many channels (more are removed)."""
    with _pruner(backbone, ratio, importance, name, round_to) as pruner:
        pruner.step()


def max_channel_ratio(backbone: nn.Module, name: str = "model",
                      round_to: int = 1) -> tuple[float, int]:
    """(the largest channel ratio that leaves every prunable group at least ``round_to``
    channels, the narrowest group's width). Beyond that ratio torch-pruning skips a group it
    would empty, so MACs stop falling with the ratio."""
    with _pruner(backbone, 0.0, importance_of("l1"), name) as pruner:
        sizes = [pruner.DG.get_out_channels(group[0].dep.target.module)
                 for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                       root_module_types=pruner.root_module_types)]
    sizes = [n for n in sizes if n and n > round_to]
    if not sizes:
        raise KwsError(f"{name}: has no channel group torch-pruning could narrow"
                       + (f" to a multiple of {round_to}" if round_to > 1 else ""))
    return (1.0 - round_to / min(sizes)) * (1 - 1e-9), min(sizes)


def _has_empty_layer(backbone: nn.Module) -> bool:
    return any(t.numel() == 0 for t in backbone.parameters())


def prune_to_macs(backbone: nn.Module, target_macs: float, importance, macs_input: torch.Tensor,
                  name: str = "model", round_to: int = 1) -> tuple[nn.Module, float]:
    """(a pruned copy of ``backbone`` with MACs <= ``target_macs`` on ``macs_input``, the
    channel ratio used): the smallest ratio that gets there, found by bisection."""
    from kwskit.eval.profile import count_macs

    def trial(ratio):
        model = copy.deepcopy(backbone)
        for src, dst in zip(backbone.parameters(), model.parameters()):  # deepcopy drops .grad
            dst.grad = None if src.grad is None else src.grad.clone()
        prune_channels(model, ratio, importance, name, round_to)
        if _has_empty_layer(model):
            return None, math.inf
        return model, count_macs(model, macs_input)

    lo = 0.0
    top, narrowest = max_channel_ratio(backbone, name, round_to)
    hi = top
    best, macs = trial(hi)
    if best is not None and macs > target_macs:
        base = count_macs(backbone, macs_input)
        keep = f"{round_to} channels" if round_to > 1 else "one channel"
        raise KwsError(
            f"{name}: removing {100 * top:.0f}% of every prunable group's channels (the most "
            f"that leaves its narrowest group, {narrowest} wide, {keep}) removes "
            f"{100 * (1 - macs / base):.1f}% of its MACs, less than the "
            f"{100 * (1 - target_macs / base):.1f}% asked for (layers kept whole, or that "
            f"the importance cannot rank, do not shrink); ask for a lower --sparsity"
            + (" or a smaller --round-to" if round_to > 1 else ""))
    best_ratio = hi
    for _ in range(BISECT_ITERS):
        mid = (lo + hi) / 2
        model, macs = trial(mid)
        if model is None or macs <= target_macs:  # far enough (or too far: a layer emptied)
            hi = mid
            if model is not None:
                best, best_ratio = model, mid
        else:
            lo = mid
    if best is None:
        raise KwsError(f"{name}: every channel ratio that reaches the --sparsity asked for "
                       "empties a layer; ask for a lower --sparsity")
    return best, best_ratio


def accumulate_gradients(pipeline: nn.Module, loader, batches: int) -> int:
    """Sum the cross-entropy gradients of ``batches`` training batches into ``.grad`` (eval
    mode: BatchNorm statistics stay as trained). Returns the clips seen."""
    pipeline.eval()
    pipeline.zero_grad(set_to_none=True)
    seen = 0
    for i, (wave, target) in enumerate(loader):
        if i >= batches:
            break
        F.cross_entropy(pipeline(wave), target).backward()
        seen += len(target)
    if seen == 0:
        raise KwsError("--importance taylor: no training clips to compute gradients on")
    return seen


# ---------------------------------------------------------------------------- the command

def clip_features(pipeline: nn.Module, clip_samples: int) -> torch.Tensor:
    """The backbone's input for one clip (low-level noise), as ``kwskit info`` measures MACs."""
    wave = 0.1 * torch.randn(1, clip_samples, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return pipeline.eval().features(wave)


def _write_run(folder: Path, cfg, arch: dict, labels: list[str], model: nn.Module,
               best: dict, report: dict) -> None:
    """A run directory without training (``--finetune-epochs 0``): best.pt only."""
    from kwskit.config import save_config
    from kwskit.fsutil import write_json
    from kwskit.models.io import save_checkpoint
    from kwskit.train.run import write_labels

    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.yaml")
    write_labels(folder, labels)
    save_checkpoint(folder / "checkpoints" / "best.pt",
                    {"model": model.state_dict(), "optimizer": None, "config": cfg.to_dict(),
                     "arch": arch, "labels": labels, "epoch": 0, "history": [], "best": best,
                     "prune": report, "torch_version": torch.__version__})
    write_json(folder / "metrics.json", {"history": [], "best": best, "labels": labels})


def prune_run(run: str | Path, out: str | Path, *, sparsity, steps: int = 1,
              finetune_epochs: int = 3, importance: str = DEFAULT_IMPORTANCE,
              data: str | None = None, which: str = "best", lr: float | None = None,
              round_to: int = DEFAULT_ROUND_TO, overrides: list[str] | None = None,
              quiet: bool = True, track: bool = False) -> dict:
    """Prune ``run`` to ``sparsity`` (share of MACs removed) in ``steps`` steps, each
    fine-tuned ``finetune_epochs`` epochs (cosine from ``lr``, default the run's own
    ``optim.lr``; ``overrides`` as ``--set``), into the new run ``out``; every pruned group
    keeps a multiple of ``round_to`` channels. Returns the report that ``out/prune.json``
    holds (plus ``"run"``)."""
    from kwskit.compress.qat import qat_config
    from kwskit.config import apply_overrides, config_from_dict
    from kwskit.eval.profile import count_macs, count_params
    from kwskit.fsutil import atomic_dir, check_new_out, write_json
    from kwskit.models.io import (ARCH_EDITS, arch_of, build_from_arch, load_model,
                                  read_checkpoint, resolve_checkpoint)
    from kwskit.models.pruned import record_shapes
    from kwskit.threads import choose_threads
    from kwskit.train.data import TrainData
    from kwskit.train.loop import evaluate_loss_acc, fit

    sparsity = parse_sparsity(sparsity)
    steps = _count("--steps", steps, 1)
    epochs = _count("--finetune-epochs", finetune_epochs, 0)
    round_to = _count("--round-to", round_to, 1)
    check_importance(importance)
    out = Path(out)
    check_new_out(out)

    path = resolve_checkpoint(run, which)
    pipeline, run_cfg, labels = load_model(path)
    arch = read_checkpoint(path).get("arch") or arch_of(run_cfg, len(labels))
    name = arch["name"]
    others = [k for k in ARCH_EDITS if k != "pruned" and arch.get(k) is not None]
    if others:
        raise KwsError(f"{run}: its model carries {', '.join(others)} edits; prune the float "
                       "run it was made from")
    check_prunable(pipeline.backbone, name)
    base_arch = {k: v for k, v in arch.items() if k != "pruned"}
    if epochs:
        cfg = qat_config(run_cfg, run_cfg.optim.lr if lr is None else lr, epochs, overrides)
    else:
        cfg = config_from_dict(apply_overrides(run_cfg.to_dict(), list(overrides or [])))
    torch.set_num_threads(choose_threads(cfg.train.threads)[0])
    td = TrainData(cfg, data, quiet=True)
    if td.labels != labels:
        raise KwsError(f"{run}: its labels {labels} differ from the config's {td.labels} "
                       "(data.labels must stay the run's)")
    cfg.data.root = td.root
    cpu = torch.device("cpu")

    def val_acc(model):
        return evaluate_loss_acc(model, td.val_loader, cpu)["accuracy"]

    feats = clip_features(pipeline, cfg.data.clip_samples)
    base_macs = count_macs(pipeline.backbone, feats)
    report = {"source": str(path), "model": name, "sparsity": sparsity, "steps": steps,
              "finetune_epochs": epochs, "importance": importance, "lr": cfg.optim.lr,
              "round_to": round_to,
              "macs_measure": "backbone MACs of one 1-s clip (kwskit info)",
              "base": {"macs": base_macs, "params": count_params(pipeline.backbone),
                       "val_acc": val_acc(pipeline)}, "history": []}
    fresh = build_from_arch(base_arch).backbone
    imp = importance_of(importance)
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(
            prefix=f".{out.name}.steps.", dir=out.parent) as work:
        for k in range(1, steps + 1):
            target = sparsity * k / steps
            if importance == "taylor":
                accumulate_gradients(pipeline, td.train_loader, TAYLOR_BATCHES)
            backbone, ratio = prune_to_macs(pipeline.backbone, (1 - target) * base_macs, imp,
                                            feats, name, round_to)
            pipeline.backbone = backbone
            pipeline.zero_grad(set_to_none=True)
            step_arch = {**base_arch, "pruned": record_shapes(backbone, fresh)}
            macs = count_macs(backbone, feats)
            row = {"step": k, "target_sparsity": target, "channel_ratio": round(ratio, 4),
                   "macs": macs, "params": count_params(backbone),
                   "sparsity": 1 - macs / base_macs, "pruned_val_acc": val_acc(pipeline)}
            if epochs:
                folder = tmp if k == steps else Path(work) / f"step{k}"
                result = fit(cfg, folder, data=td.root, quiet=quiet, track=track,
                             start={"arch": step_arch, "model": pipeline.state_dict()})
                pipeline = load_model(folder)[0]  # its best epoch
                row["finetuned_val_acc"] = (result.get("best") or {}).get("val_acc")
            report["history"].append(row)
            if not quiet:
                tuned = f", fine-tuned {_acc(row['finetuned_val_acc'])}" if epochs else ""
                print(f"step {k}/{steps}: {100 * row['sparsity']:.1f}% of MACs removed "
                      f"({macs / 1e6:.2f} M), val_acc after pruning "
                      f"{_acc(row['pruned_val_acc'])}{tuned}")
        report["final"] = {k: report["history"][-1][k] for k in ("macs", "params", "sparsity")}
        report["final"]["val_acc"] = report["history"][-1].get(
            "finetuned_val_acc", report["history"][-1]["pruned_val_acc"])
        if not epochs:
            _write_run(tmp, cfg, step_arch, labels, pipeline,
                       {"epoch": 0, "val_acc": report["final"]["val_acc"]}, report)
        write_json(tmp / "prune.json", report)
    return {**report, "run": str(out)}


def _acc(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def format_summary(report: dict) -> str:
    """A few lines for the terminal: before and after."""
    b, f = report["base"], report["final"]
    return "\n".join([
        f"{report['model']}: {report['importance']} importance, {report['steps']} step(s), "
        f"{report['finetune_epochs']} fine-tune epoch(s) each",
        f"  before: {b['params']:,} params, {b['macs'] / 1e6:.2f} M MACs, "
        f"val_acc {_acc(b['val_acc'])}",
        f"  after:  {f['params']:,} params, {f['macs'] / 1e6:.2f} M MACs "
        f"({100 * f['sparsity']:.1f}% fewer), val_acc {_acc(f['val_acc'])}",
        f"run: {report['run']}"])
