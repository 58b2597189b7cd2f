"""The training loop: short and linear on purpose (nanoGPT style), read it top to bottom.

Repeatability: everything random is derived from (seed, epoch) -- the batch order, the
augmentation of each clip, dropout -- so a run resumed from ``last.pt`` after a kill ends with
the same weights as an unbroken run. Checkpoints are written after every epoch, atomically.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from kwskit.config import ExperimentConfig, config_from_dict, save_config
from kwskit.errors import KwsError
from kwskit.fsutil import check_new_out, write_json
from kwskit.kernels import cpu_training_kernels
from kwskit.layers.fused import uses_cpu_kernels
from kwskit.models.io import arch_of, build_pipeline, read_checkpoint, save_checkpoint
from kwskit.threads import choose_threads
from kwskit.train import distributed as dd
from kwskit.train.allocator import keep_freed_memory
from kwskit.train.run import write_labels
from kwskit.train.tracking import Tracker


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local)
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KwsError(f"train.device: {name} asked for, but no CUDA GPU is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise KwsError(f"train.device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None


def lr_at(cfg: ExperimentConfig, epoch_float: float) -> float:
    """Learning rate at a fractional epoch: linear warm-up, then constant / step / cosine."""
    base, s = cfg.optim.lr, cfg.schedule
    if s.warmup_epochs > 0 and epoch_float < s.warmup_epochs:
        return base * (epoch_float + 1e-9) / s.warmup_epochs
    if s.name == "constant":
        return base
    if s.name == "step":
        return base * s.gamma ** math.floor(epoch_float / s.step_epochs)
    span = max(cfg.train.epochs - s.warmup_epochs, 1e-9)
    progress = min(max((epoch_float - s.warmup_epochs) / span, 0.0), 1.0)
    return s.min_lr + 0.5 * (base - s.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(cfg: ExperimentConfig, model: torch.nn.Module,
                   extra: list | None = None) -> torch.optim.Optimizer:
    """The config's optimiser over ``model`` (and ``extra`` parameters, e.g. an objective's)."""
    o = cfg.optim
    # No weight decay on norms and biases (1-D tensors), as the published recipes do, nor on
    # what a backbone names in no_weight_decay() (e.g. KWT's class token and position embedding).
    backbone = getattr(model, "backbone", model)
    skip = {f"backbone.{n}" if backbone is not model else n
            for n in (backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else ())}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.dim() > 1 and n not in skip]
    no_decay = [p for n, p in named if p.dim() <= 1 or n in skip]
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if extra:
        groups.append({"params": extra, "weight_decay": o.weight_decay})
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    return torch.optim.AdamW(groups, lr=o.lr)


class CrossEntropy(torch.nn.Module):
    """The default training objective: cross-entropy with the config's label smoothing.

    An objective is the loop's loss seam: ``objective(net, wave, target) -> (loss, logits)``.
    Distillation (a teacher on the same augmented batch) or a detection loss replace it without
    touching the loop; parameters it owns (e.g. a feature projection) are trained with the model.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, net, wave, target):
        logits = net(wave)
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing), logits


def default_objective(cfg: ExperimentConfig, labels: list[str]) -> torch.nn.Module:
    """The config's loss: ``train.loss`` ce (CrossEntropy) or maxpool (MaxPoolDetection)."""
    if cfg.train.loss == "maxpool":
        from kwskit.train.maxpool_loss import MaxPoolDetection

        return MaxPoolDetection(labels, cfg.train.loss_context_s, cfg.train.label_smoothing,
                                clip=cfg.train.loss_clip)
    return CrossEntropy(cfg.train.label_smoothing)


def fit(cfg: ExperimentConfig, out: str | Path, *, data: str | None = None, resume: bool = False,
        tracking_uri: str | None = None, track: bool = True, quiet: bool = False,
        objective: torch.nn.Module | None = None, start: dict | None = None) -> dict:
    """Train ``cfg`` into run directory ``out``; returns the final metrics dict.

    ``objective`` replaces the cross-entropy loss (``CrossEntropy``'s call signature).
    ``start`` = ``{"arch": spec, "model": state_dict}`` starts from given weights of a given
    structure (a pruned or quantization-aware model, a found architecture) instead of a fresh
    model from the config; the checkpoints record that ``arch``, so the run reloads as it is.
    """
    from kwskit.train.data import TrainData

    out = Path(out)
    if objective is not None and cfg.train.loss != "ce":
        raise KwsError(f"config: train.loss: {cfg.train.loss} cannot be combined with another "
                       "objective (e.g. distillation's); set train.loss=ce")
    state = None
    if resume:
        ck = out / "checkpoints" / "last.pt"
        if not ck.exists():
            raise KwsError(f"{out}: nothing to resume (no checkpoints/last.pt)")
        state = read_checkpoint(ck)
        cfg = config_from_dict(state["config"])  # the run's own config wins on resume
    elif (out / "checkpoints" / "last.pt").exists():
        raise KwsError(f"{out}: already holds a run; use --resume to continue it or choose another --out")
    else:
        check_new_out(out)

    device = pick_device(cfg.train.device)
    rank, world = dd.init_distributed(device)
    main = rank == 0
    threads, why = choose_threads(cfg.train.threads)
    torch.set_num_threads(threads)
    if main and not quiet:
        print(f"threads: {threads} ({why}; set train.threads or KWSKIT_THREADS to change)",
              file=sys.stderr)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults for the activations each step (allocator.py)
    use_amp, amp_dtype = amp_setting(cfg.train.amp, device)
    if main and not quiet and use_amp and device.type == "cpu":
        print("precision: bfloat16 autocast on this CPU's native bf16 units (train.amp=false "
              "for float32)", file=sys.stderr)

    # before anything is loaded or written: a tracking server that is down fails fast
    tracker = Tracker(out, tracking_uri, enabled=main and track)
    td = TrainData(cfg, data, rank=rank, world=world, quiet=quiet or not main)
    cfg.data.root = td.root  # the saved config names the data it was trained on (and --resume uses it)
    labels = td.labels
    # the structure the checkpoints record (a resumed run keeps the one it was saved with)
    arch = state.get("arch") if state is not None else (start or {}).get("arch")
    arch = arch or arch_of(cfg, len(labels))
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_pipeline(cfg, len(labels), arch).to(device)
    if start is not None and state is None:
        model.load_state_dict(start["model"])
    objective = (objective or default_objective(cfg, labels)).to(device)
    if hasattr(objective, "check"):  # before anything is written: can it train this model?
        objective.check(model)
    if device.type == "cpu" and uses_cpu_kernels(model):
        cpu_training_kernels()  # built (once per machine) before the first epoch's clock starts
    optimizer = make_optimizer(cfg, model, extra=list(objective.parameters()))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    history, best, start_epoch, mlflow_id = [], None, 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"]
        mlflow_id = state.get("mlflow_run_id")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    if main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        write_labels(out, labels)
    mlflow_id = tracker.start(out.name, cfg.to_dict(), resume_id=mlflow_id)

    miner = None
    if cfg.mining.rounds > 0:
        from kwskit.train.mining import HardNegativeMiner

        miner = HardNegativeMiner(cfg, td, out, quiet=quiet or not main)
        miner.restore(td, start_epoch)
    status = "FAILED"
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            if miner is not None:
                miner(model, td, epoch)  # a mining round adds hard negatives to the training set
            steps_per_epoch = len(td.train_loader)
            td.set_epoch(epoch)
            torch.manual_seed(cfg.train.seed * 1_000_003 + epoch + 1)  # dropout, SpecAugment
            net.train()
            t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
            bar = tqdm(td.train_loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch",
                       disable=quiet or not main or None, leave=False, dynamic_ncols=True)
            for step, (wave, target) in enumerate(bar):
                lr = lr_at(cfg, epoch + step / steps_per_epoch)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                wave, target = wave.to(device, non_blocking=True), target.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss, logits = objective(net, wave, target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.train.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                n = target.numel()
                seen += n
                loss_sum += loss.item() * n
                correct += (logits.argmax(1) == target).sum().item()
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.2e}")
            train_loss, train_correct, train_seen = dd.all_sum([loss_sum, correct, seen], device)
            seconds = time.time() - t0
            # a CPU scores validation in float32: the reported accuracy is the model's own
            val = evaluate_loss_acc(model, td.val_loader, device, use_amp and device.type == "cuda",
                                    amp_dtype)
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss / train_seen,
                   "train_acc": train_correct / train_seen, "val_loss": val["loss"],
                   "val_acc": val["accuracy"], "seconds": round(seconds, 2),
                   "clips_per_s": round(train_seen / seconds, 1)}
            if miner is not None:
                row["hard_negatives"] = miner.total
            history.append(row)
            # Without a validation split the last epoch counts as the best.
            improved = (best is None or val["accuracy"] is None
                        or best["val_acc"] is None or val["accuracy"] > best["val_acc"])
            if improved:
                best = dict(row)
            if main:
                if improved:
                    save_checkpoint(out / "checkpoints" / "best.pt", _state(model, None, cfg, arch, labels,
                                                                           epoch + 1, history, best, mlflow_id))
                save_checkpoint(out / "checkpoints" / "last.pt", _state(model, optimizer, cfg, arch, labels,
                                                                       epoch + 1, history, best, mlflow_id))
                write_json(out / "metrics.json", {"history": history, "best": best, "labels": labels})
                tracker.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
                if not quiet:
                    va = "n/a" if val["accuracy"] is None else f"{val['accuracy']:.4f}"
                    tqdm.write(f"epoch {epoch + 1:3d}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.4f}  "
                               f"val_acc {va}  {seconds:.1f}s  {row['clips_per_s']:.0f} clips/s")
            dd.barrier()
        status = "FINISHED"
    finally:
        tracker.end(status)
        dd.shutdown_distributed()
    return {"history": history, "best": best, "labels": labels, "run": str(out)}


def _state(model, optimizer, cfg, arch, labels, epoch, history, best, mlflow_id) -> dict:
    """A checkpoint: weights, their architecture spec (kwskit.models.io.arch_of), the config."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
            "config": cfg.to_dict(), "arch": arch, "labels": labels, "epoch": epoch, "history": history,
            "best": best, "mlflow_run_id": mlflow_id, "torch_version": torch.__version__}


def cpu_has_bf16() -> bool:
    """True where oneDNN runs bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast
    is emulated and slower than float32."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


def amp_setting(amp, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast on?, dtype) for ``train.amp``: true = bf16 (or fp16 with loss scaling) on a GPU;
    "auto" adds bf16 on a CPU with native bf16 units (the convolutions and matmuls run on
    them, ~15% faster steps for BC-ResNet here); false = float32 everywhere."""
    if device.type == "cuda":
        use = amp in (True, "auto")
        return use, torch.bfloat16 if use and torch.cuda.is_bf16_supported() else torch.float16
    use = amp == "auto" and device.type == "cpu" and cpu_has_bf16()
    return use, torch.bfloat16


@torch.no_grad()
def evaluate_loss_acc(model, loader, device, use_amp=False, amp_dtype=torch.float16) -> dict:
    """Mean loss and accuracy over a loader, summed over all ranks."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for wave, target in loader:
        wave, target = wave.to(device), target.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            logits = model(wave)
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
        n += target.numel()
    loss_sum, correct, n = dd.all_sum([loss_sum, correct, n], device)
    if n == 0:
        return {"loss": None, "accuracy": None}
    return {"loss": loss_sum / n, "accuracy": correct / n}
