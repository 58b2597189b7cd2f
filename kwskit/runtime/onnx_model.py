"""Exported kwskit models in ONNX Runtime (numpy in, numpy out; no torch)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kwskit.errors import KwsError
from kwskit.stream.chunking import ChunkedStream


def _session(path: Path, threads: int):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise KwsError(f"the ONNX runtime needs onnxruntime ({exc}); "
                       "pip install 'kwskit[runtime]'") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = int(threads)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for bad files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise KwsError(f"{path}: not a loadable ONNX model ({first})") from None


def read_card(path: str | os.PathLike, session=None) -> dict:
    """The card kwskit wrote into an exported file's metadata (labels, kind, timing, states)."""
    sess = session or _session(Path(path), 1)
    raw = sess.get_modelmeta().custom_metadata_map
    if "kind" not in raw or "labels" not in raw:
        raise KwsError(f"{path}: not a kwskit export (no kind/labels in its metadata)")
    return {k: json.loads(v) for k, v in raw.items()}


def initial_states(card: dict) -> list[np.ndarray]:
    """The streaming model's initial states (each one value repeated, as the card says)."""
    return [np.full(s["shape"], float("-inf") if s["init"] == "-inf" else s["init"],
                    dtype=np.dtype(s["dtype"])) for s in card["states"]]


def _load(path, kind: str, threads: int):
    path = Path(path)
    if not path.is_file():
        raise KwsError(f"{path}: no such ONNX file")
    sess = _session(path, threads)
    meta = read_card(path, sess)
    if meta["kind"] != kind:
        raise KwsError(f"{path}: a {meta['kind']} model, not a {kind} model "
                       f"(kwskit export {'--stream' if kind == 'stream' else 'without --stream'})")
    return sess, meta


class OnnxClassifier:
    """Whole-clip scoring with an exported clip model: ``probs(audio (B, samples))``."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        self.session, self.card = _load(path, "clip", threads)
        self.labels = list(self.card["labels"])

    def probs(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, np.float32)
        return self.session.run(["probs"], {"audio": audio if audio.ndim == 2 else audio[None]})[0]


class OnnxStreamer(ChunkedStream):
    """``kwskit.stream.Streamer``'s interface over an exported streaming model: ``step``,
    ``flush``, ``reset``, ``last_times``, ``delay_s``... The model takes ``chunk_samples``
    per call (its card), so audio is buffered into whole chunks."""

    def __init__(self, path: str | os.PathLike, threads: int = 1, sample_rate: int | None = None):
        self.session, card = _load(path, "stream", threads)
        self.card, self.path = card, str(path)
        self.labels = list(card["labels"])
        self.sample_rate = int(card["sample_rate"])
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            raise KwsError(f"sample_rate: the model runs at {self.sample_rate} Hz, got "
                           f"{sample_rate} Hz (resample first)")
        self.unit, self.feed = int(card["step_samples"]), int(card["chunk_samples"])
        self.warmup_frames = int(card["warmup_frames"])
        self.win, self.left_pad = int(card["frame_win"]), int(card["frame_left_pad"])
        self.num_classes = len(self.labels)
        self.window, self.window_s = int(card["window_frames"]), float(card["window_s"])
        self._names = [s["name"] for s in card["states"]]
        self._outputs = ["probs", *[f"{n}_out" for n in self._names]]
        self.reset()

    def _start(self) -> None:
        self.states = initial_states(self.card)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, chunk.size, self.feed):
            feeds = {"audio": chunk[None, i:i + self.feed], **dict(zip(self._names, self.states))}
            probs, *self.states = self.session.run(self._outputs, feeds)
            out.append(probs[0].T)
        return np.concatenate(out).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return (f"OnnxStreamer({self.card.get('model') or Path(self.path).name}, "
                f"chunk {self.feed / self.sample_rate * 1e3:g} ms, "
                f"frame step {self.frame_step_s * 1e3:g} ms, delay {self.delay_s * 1e3:g} ms)")

