"""A torch-free runtime: exported kwskit models run with numpy + onnxruntime only.

``OnnxStreamer(path)`` streams audio through an exported streaming model with the same
interface as ``kwskit.stream.Streamer`` (so ``run_stream``, ``stream_file`` and the detector
work unchanged); ``OnnxClassifier(path)`` scores whole clips with an exported clip model;
``read_card(path)`` returns what a file says about itself. Importing this package never
imports torch: deploy with ``pip install kwskit`` (onnxruntime is a core dependency).
"""

from kwskit.runtime.onnx_model import OnnxClassifier, OnnxStreamer, initial_states, read_card

__all__ = ["OnnxClassifier", "OnnxStreamer", "initial_states", "read_card"]
