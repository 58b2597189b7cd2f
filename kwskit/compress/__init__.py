"""Compression: every command reads a run and writes a new ordinary kwskit run (``--out``).

distill.py (teacher -> student), quantize.py (post-training fp16 / int8 / n-bit weights),
qat.py (quantization-aware training at n bits), prune.py (structured channel pruning),
approx.py (hardware approximations of the SincConv front-end).
"""
