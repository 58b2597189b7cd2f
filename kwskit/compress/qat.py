"""Quantization-aware training (QAT) at n bits, started from a trained float run.

``qat_run(run, out, weight_bits=4, act_bits=8)``:

1. loads the float run (its best checkpoint and config),
2. makes it quantization-aware (``kwskit.layers.quant.apply_qat``: BatchNorm folded into the
   convs, weights per output channel at n bits, activations per tensor at 8 or 4 bits, the
   straight-through estimator) and records that under the arch key ``"qat"``,
3. calibrates the activation ranges on a few training batches (min/max, no rounding),
4. fine-tunes it with the ordinary training loop (``kwskit.train.loop.fit`` with
   ``start={"arch": ..., "model": ...}``): the run's own config with a short schedule --
   by default 3 epochs, cosine to 0 from the run's learning rate (a tenth of it at 8/8 bits,
   ``default_lr``), no warm-up.

The result is an ordinary run (``kwskit eval / stream / export / train --resume`` rebuild the
QAT model from its arch). ``qat.json`` beside it records the source run, the spec, and the
validation accuracy of the float model and of the same quantizer without training (weights
rounded, ranges calibrated), so the run says what the training bought.

QAT as a model wrapper, not a branch in the loop (nanoGPT-style loop; the approach of
Jacob et al. 2018, arXiv:1712.05877; 8/4/2/1-bit weights trained with the STE as in
arXiv:2012.10138).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from kwskit.config import ExperimentConfig, apply_overrides, config_from_dict
from kwskit.errors import KwsError
from kwskit.fsutil import write_json
from kwskit.layers.quant import apply_qat, check_qat_spec, set_calibrating
from kwskit.models.io import arch_of, load_model, read_checkpoint, resolve_checkpoint

DEFAULT_EPOCHS = 3


def default_lr(cfg: ExperimentConfig, spec: dict) -> float:
    """The fine-tuning peak lr: a tenth of the run's own ``optim.lr`` at 8/8 bits, where
    rounding costs almost nothing and the weights need only a nudge; the run's own lr below,
    where they must move further (DS-CNN-S, w2a8, 2 epochs on gsc-dev: 78.2% val at a tenth,
    84.9% at the run's lr)."""
    full = min(spec["weight_bits"], spec["act_bits"]) >= 8
    return cfg.optim.lr * (0.1 if full else 1.0)


def qat_config(cfg: ExperimentConfig, lr: float, epochs: int = DEFAULT_EPOCHS,
               overrides: list[str] | None = None) -> ExperimentConfig:
    """The float run's config with the fine-tuning schedule: ``epochs`` epochs, cosine from
    ``lr`` to 0, no warm-up; then ``--set`` overrides."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise KwsError(f"--epochs: must be a positive number of epochs, got {epochs!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise KwsError(f"--lr: must be a positive number, got {lr!r}")
    data = cfg.to_dict()
    data["train"]["epochs"] = epochs
    data["optim"]["lr"] = float(lr)
    data["schedule"].update(name="cosine", warmup_epochs=0.0, min_lr=0.0)
    return config_from_dict(apply_overrides(data, list(overrides or [])))


@torch.no_grad()
def calibrate(model: torch.nn.Module, loader, clips: int) -> int:
    """Set every activation range of ``model`` to the min/max over about ``clips`` clips of
    ``loader`` (eval mode, no rounding while observing). Returns the clips seen."""
    model.eval()
    set_calibrating(model, True)
    seen = 0
    try:
        for wave, _ in loader:
            model(wave)
            seen += len(wave)
            if seen >= clips:
                break
    finally:
        set_calibrating(model, False)
    if seen == 0:
        raise KwsError("qat: no training clips to calibrate the activation ranges on")
    return seen


def prepare_qat(run: str | Path, spec: dict, which: str = "best"):
    """(QAT pipeline holding the run's weights, uncalibrated; the run's config; labels; arch
    with the ``"qat"`` key) for a trained float run."""
    spec = check_qat_spec(spec)
    path = resolve_checkpoint(run, which)
    model, cfg, labels = load_model(path)
    arch = read_checkpoint(path).get("arch") or arch_of(cfg, len(labels))
    if arch.get("qat") is not None:
        raise KwsError(f"{run}: is a quantization-aware run already (arch qat={arch['qat']}); "
                       "start from its float run")
    apply_qat(model, spec)
    return model, cfg, labels, {**arch, "qat": spec}


def qat_run(run: str | Path, out: str | Path, *, weight_bits: int = 8, act_bits: int = 8,
            first_last_bits: int | None = 8, epochs: int = DEFAULT_EPOCHS, lr: float | None = None,
            data: str | None = None, which: str = "best", calib_clips: int = 500,
            overrides: list[str] | None = None, baselines: bool = True, quiet: bool = True,
            track: bool = False, tracking_uri: str | None = None) -> dict:
    """Fine-tune the float run ``run`` quantization-aware into the new run ``out`` (module
    doc); returns ``fit``'s result plus ``"qat"`` (what ``qat.json`` holds)."""
    from kwskit.fsutil import check_new_out
    from kwskit.train.data import TrainData
    from kwskit.train.loop import evaluate_loss_acc, fit

    check_new_out(Path(out))  # before minutes of calibration and baselines
    if isinstance(calib_clips, bool) or not isinstance(calib_clips, int) or calib_clips < 1:
        raise KwsError(f"--calib-clips: must be a positive number of clips, got {calib_clips!r}")
    spec = {"weight_bits": weight_bits, "act_bits": act_bits, "first_last_bits": first_last_bits}
    model, run_cfg, labels, arch = prepare_qat(run, spec, which)
    cfg = qat_config(run_cfg, default_lr(run_cfg, arch["qat"]) if lr is None else lr, epochs,
                     overrides)
    td = TrainData(cfg, data, quiet=True)
    if td.labels != labels:
        raise KwsError(f"{run}: its labels {labels} differ from the config's {td.labels} "
                       "(data.labels must stay the run's)")
    cpu = torch.device("cpu")
    report = {"source": str(resolve_checkpoint(run, which)), "spec": arch["qat"],
              "epochs": cfg.train.epochs, "lr": cfg.optim.lr}
    if baselines:
        float_model = load_model(run, which)[0]
        report["float_val_acc"] = evaluate_loss_acc(float_model, td.val_loader, cpu)["accuracy"]
    td.set_epoch(0)
    report["calib_clips"] = calibrate(model, td.train_loader, calib_clips)
    if baselines:  # the same quantizer without training: post-training rounding
        report["rounded_val_acc"] = evaluate_loss_acc(model, td.val_loader, cpu)["accuracy"]
    result = fit(cfg, out, data=td.root, start={"arch": arch, "model": model.state_dict()},
                 quiet=quiet, track=track, tracking_uri=tracking_uri)
    best = result.get("best") or {}
    report["qat_val_acc"] = best.get("val_acc")
    write_json(Path(out) / "qat.json", report)
    return {**result, "qat": report}
