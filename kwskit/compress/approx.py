"""``kwskit approx``: a trained SincConv run with its sinc filters and log compression computed
as hardware would (kwskit.layers.approx_math), written as a new run. No training.

Mittermaier et al. 2019, arXiv:1911.02086, end on computing the sinc-convolution filters and
the log compression on the chip itself. This command switches a trained model over: the new
run has the same weights and an "approx" entry in its checkpoint's arch spec, so
``kwskit eval/stream/export/info`` rebuild it approximated; metrics.json records the
validation accuracy before and after (when the data set is at hand), the largest filter-tap
error and the log's largest error.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from kwskit.errors import KwsError


def approximation_errors(exact: torch.nn.Module, approx: torch.nn.Module, spec: dict) -> dict:
    """Largest filter-tap error of the approximated sinc layer against the exact one (over all
    taps of all filters) and the log approximation's largest error on its mantissa range."""
    from kwskit.layers.approx_math import log2_pwl
    from kwskit.layers.sinc import SincConv1d

    errors = {}
    if spec["sinc"] != "exact":
        pairs = zip((m for m in exact.modules() if isinstance(m, SincConv1d)),
                    (m for m in approx.modules() if isinstance(m, SincConv1d)))
        with torch.no_grad():
            errors["filter_max_abs_err"] = max(
                float((b.filters() - a.filters()).abs().max()) for a, b in pairs)
    if spec["log"] != "exact":
        # log2_pwl's error repeats in every octave: one octave of 1 + |x| shows all of it
        y = torch.linspace(1.0, 2.0, 100_001, dtype=torch.float64)
        err = (math.log(2.0) * log2_pwl(y, spec["log_segments"]) - torch.log(y)).abs().max()
        errors["log_max_abs_err"] = float(err)
    return errors


def validation_accuracy(models: list, cfg, labels: list[str], root: str) -> tuple[list[float], int]:
    """Accuracy of each model on the validation split of ``root`` (the clips ``kwskit eval
    --split validation`` scores, built with the run's data settings), and the clip count."""
    from kwskit.eval.evaluate import predict, split_clips

    waves, target, _ = split_clips(cfg, labels, root, "validation")
    return [float((predict(m, waves, desc="validation").argmax(1) == target).mean())
            for m in models], len(target)


def approximate_run(run: str | Path, out: str | Path, *, sinc: str | None = None,
                    log: str | None = None, cordic_iters: int | None = None,
                    frac_bits: int | None = None, log_segments: int | None = None,
                    data: str | None = None, which: str = "best") -> dict:
    """Write ``out``: ``run`` with the approximations ``kwskit.layers.approx_math.approx_spec``
    builds from the options (None: its default). Returns the record kept in metrics.json."""
    from kwskit.config import save_config
    from kwskit.fsutil import atomic_dir, check_new_out, write_json
    from kwskit.layers.approx_math import approx_spec
    from kwskit.models.io import (arch_of, build_from_arch, load_model, read_checkpoint,
                                  resolve_checkpoint, save_checkpoint)
    from kwskit.train.run import write_labels

    spec = approx_spec(sinc=sinc, log=log, cordic_iters=cordic_iters, frac_bits=frac_bits,
                       log_segments=log_segments)
    out = Path(out)
    check_new_out(out)
    if data is not None and not Path(data).is_dir():
        raise KwsError(f"--data {data}: no such folder")
    ckpt = resolve_checkpoint(run, which)
    exact, cfg, labels = load_model(ckpt)
    state = read_checkpoint(ckpt)
    arch = dict(state.get("arch") or arch_of(cfg, len(labels)))
    arch["approx"] = spec
    try:
        model = build_from_arch(arch)
    except KwsError as exc:
        raise KwsError(f"{run}: {arch['name']}: {exc}") from None
    model.load_state_dict(state["model"])
    model.eval()

    record = {"source": str(Path(run).resolve()), "checkpoint": ckpt.name, **spec,
              **approximation_errors(exact, model, spec)}
    root = data or cfg.data.root
    if root and Path(root).is_dir():
        (before, after), n = validation_accuracy([exact, model], cfg, labels, str(root))
        record.update(val_acc_before=before, val_acc_after=after, val_clips=n, data=str(root))
        cfg.data.root = str(root)
    else:
        record.update(val_acc_before=None, val_acc_after=None,
                      note="no data set at hand (pass --data): accuracy not measured")
    best = {"epoch": state.get("epoch"), "val_acc": record["val_acc_after"]}

    with atomic_dir(out) as tmp:
        (tmp / "checkpoints").mkdir()
        save_config(cfg, tmp / "config.yaml")
        write_labels(tmp, labels)
        save_checkpoint(tmp / "checkpoints" / "best.pt",
                        {"model": model.state_dict(), "optimizer": None, "config": cfg.to_dict(),
                         "arch": arch, "labels": labels, "epoch": state.get("epoch"),
                         "history": [], "best": best, "approx": record,
                         "torch_version": torch.__version__})
        write_json(tmp / "metrics.json", {"history": [], "best": best, "labels": labels,
                                          "approx": record})
    return {**record, "run": str(out)}


def format_summary(record: dict) -> str:
    """The lines ``kwskit approx`` prints."""
    lines = []
    if record["sinc"] != "exact":
        lines.append(f"sinc filters: CORDIC, {record['cordic_iters']} iterations, "
                     f"{record['frac_bits']} fractional bits (largest tap error "
                     f"{record['filter_max_abs_err']:.2e})")
    if record["log"] != "exact":
        seg = record["log_segments"]
        lines.append(f"log: exponent + {seg}-segment linear mantissa (largest error "
                     f"{record['log_max_abs_err']:.2e})")
    if record["val_acc_after"] is None:
        lines.append(record["note"])
    else:
        lines.append(f"val_acc {record['val_acc_before']:.4f} -> {record['val_acc_after']:.4f} "
                     f"({record['val_clips']} validation clips of {record['data']})")
    lines.append(f"run: {record['run']}")
    return "\n".join(lines)
