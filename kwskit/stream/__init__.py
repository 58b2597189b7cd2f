"""Streaming keyword spotting: chunked inference with per-layer state, detection, evaluation.

- ``Streamer(pipeline).step(samples)`` -> probabilities of every new output frame
  (``streaming.py``); ``scores_whole`` is the same computed in one go.
- ``Detector(labels, threshold=...)``: smoothing, threshold spans, debounce (``detector.py``).
- ``stream_file`` / ``audio_blocks``: long recordings in constant memory (``longaudio.py``).
- ``evaluate_stream``: a model on a long stream, DET curves per hour (``evalstream.py``); the
  streams it builds come from kwskit.data.streams, the scoring rule from kwskit.eval.detection
  (their names are importable here too).

Names are imported lazily so ``kwskit --help`` does not load torch.
"""

from importlib import import_module

# name -> module: a module of this package, or a full "kwskit.x.y" path
_EXPORTS = {
    "Streamer": "streaming", "scores_whole": "streaming", "logits_whole": "streaming",
    "window_frames": "streaming",
    "Detector": "detector", "Detection": "detector", "detect": "detector",
    "audio_blocks": "longaudio", "run_stream": "longaudio", "stream_file": "longaudio",
    "StreamResult": "longaudio",
    "evaluate_stream": "evalstream",
    "build_test_stream": "kwskit.data.streams", "read_labels_file": "kwskit.data.streams",
    "score_detections": "kwskit.eval.detection", "sweep": "kwskit.eval.detection",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = _EXPORTS[name]
        return getattr(import_module(module if "." in module else f"kwskit.stream.{module}"), name)
    raise AttributeError(f"module 'kwskit.stream' has no attribute {name!r}")
