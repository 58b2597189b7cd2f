"""Post-training int8 and fp16 versions of kwskit's exported ONNX models (ONNX Runtime).

Both work on the files ``kwskit.export.onnx`` writes (the clip model and the streaming model,
front-end included) and keep their card (``metadata_props``), so ``kwskit.runtime`` runs them
as it runs the float files.

- **int8** (``quantize_int8``): ONNX Runtime's static quantizer
  (``onnxruntime.quantization.quantize_static``) in QDQ format on the layers with weights
  (Conv, Gemm, MatMul): weights int8, symmetric, per output channel (Krishnamoorthi 2018,
  arXiv:1806.08342); their inputs and outputs uint8, asymmetric, per tensor, the ranges
  calibrated (min / max) on real audio (the affine scheme of Jacob et al. 2018,
  arXiv:1712.05877). ORT's graph optimiser fuses DequantizeLinear -> Conv -> QuantizeLinear
  into integer kernels (QLinearConv, QGemm, QLinearMatMul); ``optimized_op_counts`` shows the
  graph it runs. Element-wise ops between them (residual adds, BC-ResNet's SubSpectralNorm and
  Swish, pooling) stay float, as in torchao's X86InductorQuantizer: quantizing them too
  (``op_types=None``: QLinearAdd, QLinearMul, QLinearSigmoid) cost BC-ResNet-1 0.7 points
  of gsc-dev validation accuracy (91.44% against 92.16%, float 92.05%), lowered its
  streaming model's top-1 agreement with the float one from 99.0% to 97.4%, and ran no
  faster in ORT 1.32 on x86 (2.3-2.4 ms against 2.1 ms a clip). uint8 activations, not int8:
  with int8 activations ORT's CPU provider left 20 of BC-ResNet-1's 43 convolutions in float
  with Q/DQ pairs around them; U8S8 is what its x86 kernels take. The streaming model's
  state tensors are graph inputs / outputs: they stay float, and where a state feeds a
  convolution (the ring buffers of past frames) the convolution's quantized input covers
  it, so the values the model computes with are on the int8 grid (``stream_agreement``
  measures the effect).
- **fp16** (``convert_fp16``): onnxconverter-common's ``convert_float_to_float16`` with float32
  inputs and outputs (states included). The weights are stored in half precision (half the
  bytes); ORT's CPU provider has few fp16 kernels on x86, so it inserts casts and computes in
  float32 there, while GPU / ARM / WebGPU providers compute in fp16.

What computes in float32 in both: the front-end (``frontend_nodes``: the power spectrum of a
loud frame exceeds fp16's 65504 and spans a range no 8-bit grid holds; the log-mel features
are quantized as the first convolution's input; in fp16 its constants are stored in half
precision like the weights and cast up) and the final softmax (probabilities keep float
resolution for thresholds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from kwskit.errors import KwsError
from kwskit.fsutil import atomic_path

FRONTEND_PREFIX = "pipeline.frontend."  # the exporter names the front-end's constants so
CALIB_METHODS = ("minmax", "percentile", "entropy")
INT8_OPS = ["Conv", "Gemm", "MatMul"]  # the layers with weights (module doc)


def _require(what: str):
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise KwsError(f"{what} needs onnx and onnxruntime ({exc}); pip install 'kwskit[onnx]'") from None
    return onnx


def frontend_nodes(model) -> set[str]:
    """Names of the nodes that compute the front-end: every node that reads a front-end
    constant (window, filterbank, DCT) or takes a log, and everything upstream of them."""
    producer = {out: node for node in model.graph.node for out in node.output}
    seeds = [n for n in model.graph.node
             if n.op_type == "Log" or any(i.startswith(FRONTEND_PREFIX) for i in n.input)]
    found, todo = set(), list(seeds)
    while todo:
        node = todo.pop()
        if node.name in found:
            continue
        found.add(node.name)
        todo += [producer[i] for i in node.input if i in producer]
    return found


def _named(model):
    """Give every node a name (exclusion lists and block lists go by name)."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return model


def keep_float(model) -> list[str]:
    """The nodes both conversions leave in float32: the front-end and the softmax."""
    return sorted(frontend_nodes(model) | {n.name for n in model.graph.node if n.op_type == "Softmax"})


def _card(model) -> dict:
    return {p.key: p.value for p in model.metadata_props}


def _finish(model, card: dict, extra: dict, path: Path) -> None:
    """Put the source's card back (plus ``extra``), drop the node annotations the PyTorch
    exporter adds (module paths, stack traces: debugging aids that are half of a small
    model's file), check, write atomically."""
    import onnx

    del model.metadata_props[:]
    for key, value in {**card, **{k: json.dumps(v) for k, v in extra.items()}}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


class _Feeds:
    """ONNX Runtime's CalibrationDataReader protocol over an iterable of input dicts."""

    def __init__(self, feeds: Iterable[dict]):
        self._it: Iterator[dict] = iter(feeds)
        self.count = 0

    def get_next(self):
        item = next(self._it, None)
        self.count += item is not None
        return item


@contextlib.contextmanager
def _quiet_quantizer():
    # the quantizer logs advice ("consider pre-processing") on the root logger for every call
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, feeds: Iterable[dict],
                  method: str = "minmax", extra_card: dict | None = None,
                  op_types: list[str] | None = INT8_OPS) -> dict:
    """Write the static int8 (QDQ) version of the float ONNX model ``src`` to ``dst``,
    activation ranges calibrated on ``feeds`` (input dicts, e.g. ``clip_feeds``); the
    ``op_types`` quantized (None: every op ORT can). ``method`` "percentile" and "entropy"
    keep every calibration tensor in memory (2.6 GB for BC-ResNet-1 on 300 clips), "minmax"
    only their ranges. Returns what was done (for the card and the run's record)."""
    onnx = _require("int8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIB_METHODS:
        raise KwsError(f"calibration method: one of {', '.join(CALIB_METHODS)}, got {method!r}")
    model = _named(onnx.load(str(src)))
    card, excluded = _card(model), keep_float(model)
    reader = _Feeds(feeds)
    with tempfile.TemporaryDirectory(prefix="kwskit-quant-") as tmp:
        named, out = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, str(named))
        with _quiet_quantizer():
            try:
                quantize_static(
                    str(named), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded, op_types_to_quantize=op_types,
                    calibrate_method={"minmax": CalibrationMethod.MinMax,
                                      "percentile": CalibrationMethod.Percentile,
                                      "entropy": CalibrationMethod.Entropy}[method])
            except ValueError as exc:  # e.g. "No data is collected."
                raise KwsError(f"int8 quantization of {src} failed: {exc}") from None
        record = {"mode": "int8", "weights": "int8 symmetric per output channel",
                  "activations": "uint8 asymmetric per tensor", "format": "QDQ",
                  "ops": "all" if op_types is None else list(op_types),
                  "calibration": {"method": method, "batches": reader.count},
                  "float_nodes": len(excluded), **(extra_card or {})}
        _finish(onnx.load(str(out)), card, {"quantization": record}, Path(dst))
    return record


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write the fp16 version of the float ONNX model ``src`` to ``dst`` (module doc)."""
    onnx = _require("fp16 conversion")
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise KwsError(f"fp16 needs onnxconverter-common ({exc}); pip install "
                       "'kwskit[compress]'") from None
    model = _named(onnx.load(str(src)))
    card, excluded = _card(model), keep_float(model)
    # the converter re-types a Cast's output without changing its target type (the streaming
    # model casts its int64 frame counter to float): Casts stay as they are
    block = excluded + [n.name for n in model.graph.node if n.op_type == "Cast"]
    with warnings.catch_warnings():  # a note per weight below fp16's smallest normal value
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=block)
    record = {"mode": "fp16", "weights": "float16", "io": "float32", "float_nodes": len(excluded)}
    _finish(half, card, {"quantization": record}, Path(dst))
    return record


# ------------------------------------------------------------------------------ calibration
def clip_feeds(audio: np.ndarray, batch: int = 50) -> Iterator[dict]:
    """Calibration inputs of a clip model: float clips (N, samples) in batches."""
    for i in range(0, len(audio), batch):
        yield {"audio": np.ascontiguousarray(audio[i:i + batch], dtype=np.float32)}


def stream_feeds(float_stream: str | os.PathLike, signal: np.ndarray) -> Iterator[dict]:
    """Calibration inputs of a streaming model: ``signal`` cut into its chunks, each with the
    states the float streaming model carries at that point (so the state tensors are
    calibrated on the values they take in use)."""
    from kwskit.runtime import OnnxStreamer, initial_states

    model = OnnxStreamer(float_stream)
    names = [s["name"] for s in model.card["states"]]
    outputs = ["probs", *[f"{n}_out" for n in names]]
    chunk, states = model.feed, initial_states(model.card)
    signal = np.asarray(signal, np.float32)
    for i in range(len(signal) // chunk):
        feeds = {"audio": signal[None, i * chunk:(i + 1) * chunk], **dict(zip(names, states))}
        yield feeds
        _, *states = model.session.run(outputs, feeds)


# ------------------------------------------------------------------------------ inspection
def optimized_op_counts(path: str | os.PathLike) -> dict[str, int]:
    """Op types (and counts) of the graph ONNX Runtime runs for ``path`` on the CPU after
    its graph optimisations (QDQ fusion into QLinear* kernels, constant folding...); the
    hardware-specific layout pass (NCHWc) is left out."""
    _require("inspecting an ONNX model")
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="kwskit-opt-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath).graph
    return dict(Counter(n.op_type for n in graph.node).most_common())


INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
               "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearConcat",
               "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearLeakyRelu")


def integer_ops(counts: dict[str, int]) -> int:
    """How many nodes of an op count table run integer kernels."""
    return sum(v for k, v in counts.items() if k in INTEGER_OPS)


def stream_agreement(reference: str | os.PathLike, other: str | os.PathLike,
                     signal: np.ndarray) -> dict:
    """How closely the streaming model ``other`` follows ``reference`` over one long
    ``signal``, frame by frame (both carry their own states from the start): top-1 agreement
    and absolute probability differences."""
    from kwskit.runtime import OnnxStreamer

    a = OnnxStreamer(reference).step(np.asarray(signal, np.float32))
    b = OnnxStreamer(other).step(np.asarray(signal, np.float32))
    n = min(len(a), len(b))
    if n == 0:
        raise KwsError("stream agreement: the signal is shorter than the model's warm-up")
    diff = np.abs(a[:n] - b[:n])
    return {"frames": int(n), "top1_agreement": float((a[:n].argmax(1) == b[:n].argmax(1)).mean()),
            "mean_abs_diff": float(diff.mean()), "p99_abs_diff": float(np.percentile(diff, 99)),
            "max_abs_diff": float(diff.max())}


def tensor_bytes(path: str | os.PathLike) -> int:
    """Bytes of the model's stored tensors (weights, biases, scales, zero points, front-end
    constants), leaving out int64 index tensors (the clip model's framing index)."""
    onnx = _require("inspecting an ONNX model")
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer
                   if t.data_type != onnx.TensorProto.INT64))
