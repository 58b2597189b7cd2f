"""Export trained pipelines so they run without PyTorch: ONNX clip and streaming models
(``onnx.py``); ``kwskit.runtime`` runs them with onnxruntime only."""
