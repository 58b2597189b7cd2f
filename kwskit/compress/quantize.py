"""``kwskit quantize``: post-training quantization of a trained run into a new run. No training
(quantization-aware training is ``--qat``: kwskit.compress.qat).

Three modes:

- ``int8``: static int8 ONNX models (clip and streaming) with ONNX Runtime's quantizer: the
  convolutions and linear layers in int8 (weights per output channel), their activation
  ranges calibrated on ``calib_clips`` training clips of the run's data set (the streaming
  model on the first ``stream_calib_s`` seconds of them played as one stream, its states
  carried). kwskit.compress.onnx_quant has the details and the measurements behind them.
- ``fp16``: the same two models with half-precision weights (onnxconverter-common).
- ``weights``: the PyTorch model with every conv / linear weight of the backbone rounded to
  ``bits`` bits per output channel, symmetric (1 bit: sign(w) * mean|w| per channel): the
  post-training rounding Peter, Roth & Pernkopf 2020 ("Resource-efficient DNNs for keyword
  spotting using neural architecture search and quantization", arXiv:2012.10138) apply at
  8/4/2/1 bits after training. The rounding is the weight quantizer QAT trains with
  (kwskit.layers.quant.fake_quant_weight), so this mode is QAT's starting point without the
  activation quantizers and without training.

The new run is an ordinary run directory (config.yaml, labels.json, checkpoints/best.pt,
metrics.json) plus ``quantization.json``. For int8 / fp16, best.pt is the float checkpoint
the models came from (torch commands keep working) and the quantized ONNX files lie in
``export/``; ``kwskit eval RUN`` scores the quantized clip model, ``kwskit stream RUN`` runs
the quantized streaming model (both through kwskit.runtime). For ``weights``, best.pt holds
the rounded weights. metrics.json's best val_acc is the quantized model's, on the data set's
validation split.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from kwskit.errors import KwsError

MODES = ("int8", "fp16", "weights")
WEIGHT_BITS = range(1, 9)
# Seconds of the calibration clips the streaming model is calibrated on: each call of the
# calibrating model computes the range of every tensor (~20 ms for BC-ResNet-1), so not all.
STREAM_CALIB_S = 30.0
AGREEMENT_SECONDS = 60.0  # validation audio the int8 / float streaming models are compared on


# ------------------------------------------------------------------------------ weights
def weight_layers(pipeline: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, layer) of every conv / linear of the backbone: the layers whose weights the
    ``weights`` mode rounds (the front-end's constants stay float)."""
    from kwskit.layers.quant import quantizable_layers

    names = {id(m): n for n, m in pipeline.backbone.named_modules()}
    return [(f"backbone.{names[id(layer)]}", layer)
            for _, _, layer in quantizable_layers(pipeline.backbone)]


@torch.no_grad()
def round_weights(pipeline: torch.nn.Module, bits: int) -> dict:
    """Round every conv / linear weight of ``pipeline``'s backbone to ``bits`` bits per
    output channel, in place (module doc). Returns counts: tensors, values, and the bytes of
    the backbone at that precision (rounded weights at ``bits``, its other parameters and
    float buffers at 32; the front-end's constants are not counted)."""
    from kwskit.layers.quant import fake_quant_weight

    check_bits(bits)
    layers = weight_layers(pipeline)
    rounded = 0
    for _, layer in layers:
        layer.weight.copy_(fake_quant_weight(layer.weight, bits))
        rounded += layer.weight.numel()
    backbone = pipeline.backbone
    total = sum(p.numel() for p in backbone.parameters())
    total += sum(b.numel() for b in backbone.buffers() if b.is_floating_point())
    return {"tensors": len(layers), "values": int(rounded),
            "bytes": int(math.ceil(rounded * bits / 8) + 4 * (total - rounded)),
            "bytes_fp32": int(4 * total)}


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in WEIGHT_BITS:
        raise KwsError(f"--bits: must be an integer from 1 to 8, got {bits!r}")
    return bits


# ------------------------------------------------------------------------------ the command
def _check_args(out: Path, mode: str, bits, calib_clips, chunk_ms, window_s) -> None:
    from kwskit.fsutil import check_new_out

    if mode not in MODES:
        raise KwsError(f"--mode: one of {', '.join(MODES)}, got {mode!r}")
    check_bits(bits)
    if mode == "int8" and bits != 8:
        raise KwsError(f"--bits {bits}: --mode int8 quantizes to 8 bits; use --mode weights "
                       "for weights rounded to fewer bits")
    if isinstance(calib_clips, bool) or not isinstance(calib_clips, int) or calib_clips < 1:
        raise KwsError(f"--calib-clips: must be a positive number of clips, got {calib_clips!r}")
    if not chunk_ms > 0 or not window_s > 0:
        raise KwsError(f"--chunk-ms / --window-s: must be > 0, got {chunk_ms} / {window_s}")
    check_new_out(out)


def _data_root(cfg, data: str | None, required: bool) -> str | None:
    """--data, else the run's data set (else the built-in synthetic one); None when it is not
    at hand and not ``required``."""
    from kwskit.train.data import resolve_data_root

    if data is not None and not Path(data).is_dir():
        raise KwsError(f"--data {data}: no such folder")
    root = data or cfg.data.root
    if root and not Path(root).is_dir():
        if required:
            raise KwsError(f"{root}: the run's data set is not there (calibration needs its "
                           "training clips); pass --data DIR")
        return None
    return resolve_data_root(cfg, root, quiet=True)


def _accuracy(model, waves, targets) -> float:
    from kwskit.eval.evaluate import predict

    return float((predict(model, waves, desc="validation").argmax(1) == targets).mean())


def quantize_run(run: str | Path, out: str | Path, *, mode: str = "int8", bits: int = 8,
                 data: str | None = None, calib_clips: int = 500, chunk_ms: float = 10.0, window_s: float = 1.0, which: str = "best",
                 seed: int = 0, stream_calib_s: float = STREAM_CALIB_S) -> dict:
    """Write the new run ``out``: ``run`` quantized as ``mode`` says (module doc). Returns
    the record written to ``out/quantization.json`` plus ``"run"``. The int8 streaming
    model is calibrated on the first ``stream_calib_s`` seconds of the calibration clips
    played one after another."""
    from kwskit.config import save_config
    from kwskit.eval.evaluate import QUANTIZATION_FILE, split_clips
    from kwskit.fsutil import atomic_dir, write_json
    from kwskit.models.io import load_model, read_checkpoint, resolve_checkpoint, save_checkpoint
    from kwskit.stream.calibrate import calibration_path
    from kwskit.train.run import write_labels

    out = Path(out)
    _check_args(out, mode, bits, calib_clips, chunk_ms, window_s)
    ckpt = resolve_checkpoint(run, which)
    pipeline, cfg, labels = load_model(ckpt)
    state = read_checkpoint(ckpt)
    root = _data_root(cfg, data, required=mode == "int8")
    record = {"mode": mode, "bits": bits if mode == "weights" else (8 if mode == "int8" else 16),
              "source": str(ckpt.resolve()), "model": cfg.model.name, "data": root}
    val = None
    if root is not None:
        cfg.data.root = root
        try:
            val = split_clips(cfg, labels, root, "validation")[:2]
        except KwsError:  # a data set without a validation split: accuracy not measured
            val = None
    if val is not None:
        record["val_clips"] = len(val[1])
        record["float_val_acc"] = _accuracy(pipeline, *val)

    with atomic_dir(out) as tmp:
        (tmp / "checkpoints").mkdir()
        if mode == "weights":
            record["weights"] = round_weights(pipeline, bits)
            weights = pipeline.state_dict()
            if val is not None:
                record["val_acc"] = _accuracy(pipeline, *val)
        else:
            weights = state["model"]
            record.update(_onnx_models(pipeline, cfg, labels, tmp / "export", mode, root,
                                       calib_clips, chunk_ms, window_s, seed, run,
                                       stream_calib_s))
            if val is not None:
                from kwskit.runtime import OnnxClassifier

                record["val_acc"] = _accuracy(OnnxClassifier(tmp / record["onnx"]["clip"]), *val)
        best = {"epoch": state.get("epoch"), "val_acc": record.get("val_acc")}
        save_config(cfg, tmp / "config.yaml")
        write_labels(tmp, labels)
        save_checkpoint(tmp / "checkpoints" / "best.pt",
                        {**state, "model": weights, "optimizer": None, "best": best,
                         "quantization": record})
        write_json(tmp / "metrics.json", {"history": [], "best": best, "labels": labels,
                                          "quantization": record})
        write_json(tmp / QUANTIZATION_FILE, record)
        cal = calibration_path(ckpt)
        if cal.is_file():  # the float model's detector thresholds (also in the streaming card)
            shutil.copyfile(cal, tmp / cal.name)
    return {**record, "run": str(out)}


def _onnx_models(pipeline, cfg, labels, folder: Path, mode: str, root: str | None,
                 calib_clips: int, chunk_ms: float, window_s: float, seed: int, run,
                 stream_calib_s: float) -> dict:
    """Export the float clip and streaming models, write their int8 / fp16 versions into
    ``folder``; returns the record's ONNX part (file names relative to the run)."""
    from kwskit.compress import onnx_quant as oq
    from kwskit.export.onnx import export_clip, export_stream
    from kwskit.stream.calibrate import detector_settings

    name = cfg.model.name
    files = {"clip": folder / f"{name}-{mode}.onnx", "stream": folder / f"{name}-{mode}-stream.onnx"}
    record = {"onnx": {}, "bytes": {}, "float_bytes": {}, "tensor_bytes": {},
              "float_tensor_bytes": {}, "ops": {}}
    calib = _calibration_audio(cfg, labels, root, calib_clips, seed) if mode == "int8" else None
    if calib is not None:
        record["calibration"] = {"clips": len(calib), "method": "minmax", "seed": seed,
                                 "split": "train", "stream_seconds": stream_calib_s}
    with tempfile.TemporaryDirectory(prefix="kwskit-float-") as tmp:
        floats = {"clip": Path(tmp) / "clip.onnx", "stream": Path(tmp) / "stream.onnx"}
        export_clip(pipeline, labels, floats["clip"], clip_samples=cfg.data.clip_samples, name=name)
        try:
            export_stream(pipeline, labels, floats["stream"], chunk_ms=chunk_ms,
                          window_s=window_s, name=name, calibration=detector_settings(run))
        except KwsError as exc:
            if "cannot stream" not in str(exc):
                raise
            record["stream_note"] = str(exc)
            del floats["stream"], files["stream"]
        for kind, src in floats.items():
            if mode == "fp16":
                oq.convert_fp16(src, files[kind])
            else:
                stream = calib.reshape(-1)[:int(stream_calib_s * cfg.data.sample_rate)]
                feeds = oq.clip_feeds(calib) if kind == "clip" else oq.stream_feeds(src, stream)
                oq.quantize_int8(src, files[kind], feeds,
                                 extra_card={"calibration_clips": len(calib)})
            record["onnx"][kind] = f"export/{files[kind].name}"
            record["bytes"][kind] = files[kind].stat().st_size
            record["float_bytes"][kind] = src.stat().st_size
            record["tensor_bytes"][kind] = oq.tensor_bytes(files[kind])
            record["float_tensor_bytes"][kind] = oq.tensor_bytes(src)
            record["ops"][kind] = oq.optimized_op_counts(files[kind])
        if "stream" in floats and root is not None:
            signal = _agreement_signal(cfg, labels, root, AGREEMENT_SECONDS)
            if signal is not None:
                record["stream_agreement"] = {
                    "seconds": round(len(signal) / cfg.data.sample_rate, 2),
                    **oq.stream_agreement(floats["stream"], files["stream"], signal)}
    return record


def _calibration_audio(cfg, labels, root: str, clips: int, seed: int) -> np.ndarray:
    """``clips`` training clips (float, (N, samples)) drawn with ``seed``."""
    from kwskit.data.loader import INT16_SCALE
    from kwskit.eval.evaluate import split_clips

    waves = split_clips(cfg, labels, root, "train")[0]
    pick = np.sort(np.random.default_rng(seed).permutation(len(waves))[:clips])
    return waves[pick].astype(np.float32) / INT16_SCALE


def _agreement_signal(cfg, labels, root: str, seconds: float) -> np.ndarray | None:
    """Validation clips played one after another (float), about ``seconds`` long."""
    from kwskit.data.loader import INT16_SCALE
    from kwskit.eval.evaluate import split_clips

    try:
        waves = split_clips(cfg, labels, root, "validation")[0]
    except KwsError:
        return None
    n = max(1, int(seconds * cfg.data.sample_rate) // waves.shape[1])
    return waves[:n].reshape(-1).astype(np.float32) / INT16_SCALE


def _kb(n: int) -> str:
    return f"{n / 1e3:.1f} kB"


def format_summary(r: dict) -> str:
    """The lines ``kwskit quantize`` prints."""
    from kwskit.compress.onnx_quant import integer_ops

    lines = []
    if r["mode"] == "weights":
        w = r["weights"]
        lines.append(f"weights rounded to {r['bits']} bits per output channel: {w['tensors']} "
                     f"tensors, {w['values']:,} values; backbone {_kb(w['bytes'])} at that "
                     f"precision ({_kb(w['bytes_fp32'])} fp32)")
    else:
        what = ("int8 ONNX models (weights int8 per channel, activations uint8)"
                if r["mode"] == "int8" else "fp16 ONNX models (float32 inputs and outputs)")
        cal = r.get("calibration")
        lines.append(f"{what} of {r['model']}" + (
            f"; calibrated on {cal['clips']} training clips of {r['data']}" if cal else ""))
        for kind, name in r["onnx"].items():
            ops = r["ops"][kind]
            lines.append(f"  {kind + ':':7s} {name}  {_kb(r['bytes'][kind])} (float "
                         f"{_kb(r['float_bytes'][kind])}); tensors {_kb(r['tensor_bytes'][kind])} "
                         f"(float {_kb(r['float_tensor_bytes'][kind])})"
                         + (f"; {integer_ops(ops)} integer kernels in ONNX Runtime "
                            f"({ops.get('QLinearConv', 0)} QLinearConv)" if r["mode"] == "int8" else ""))
        if r.get("stream_note"):
            lines.append(f"  stream: none ({r['stream_note']})")
        ag = r.get("stream_agreement")
        if ag:
            lines.append(f"  streaming vs float streaming model over {ag['seconds']:g} s of "
                         f"validation clips: top-1 agreement {100 * ag['top1_agreement']:.1f}% "
                         f"of {ag['frames']} frames, mean |dp| {ag['mean_abs_diff']:.4f}, "
                         f"max {ag['max_abs_diff']:.3f}")
    if r.get("val_acc") is not None:
        lines.append(f"val_acc float {r['float_val_acc']:.4f} -> {r['mode'] if r['mode'] != 'weights' else str(r['bits']) + '-bit weights'} "
                     f"{r['val_acc']:.4f} ({r['val_clips']} validation clips)")
    elif r["mode"] != "int8":
        lines.append("no data set at hand (pass --data): accuracy not measured")
    lines.append(f"run: {r['run']}")
    return "\n".join(lines)
