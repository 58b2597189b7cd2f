"""Streaming keyword spotting: chunked inference with per-layer state, detection, evaluation.

- ``Streamer(pipeline).step(samples)`` -> probabilities of every new output frame
  (``streaming.py``); ``scores_whole`` is the same computed in one go.
- ``Detector(labels, threshold=...)``: smoothing, threshold spans, debounce (``detector.py``).
- ``stream_file`` / ``audio_blocks``: long recordings in constant memory (``longaudio.py``).
- ``evaluate_stream``: generated test streams, DET curves per hour (``evalstream.py``).

Names are imported lazily so ``kwskit --help`` does not load torch.
"""

from importlib import import_module

_EXPORTS = {
    "Streamer": "streaming", "scores_whole": "streaming", "logits_whole": "streaming",
    "window_frames": "streaming",
    "Detector": "detector", "Detection": "detector", "detect": "detector",
    "audio_blocks": "longaudio", "run_stream": "longaudio", "stream_file": "longaudio",
    "StreamResult": "longaudio",
    "evaluate_stream": "evalstream", "build_test_stream": "evalstream",
    "read_labels_file": "evalstream", "score_detections": "evalstream", "sweep": "evalstream",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"kwskit.stream.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'kwskit.stream' has no attribute {name!r}")
