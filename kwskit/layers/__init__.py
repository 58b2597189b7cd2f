"""Streaming-aware building blocks: every layer that looks along time runs on whole sequences
(``forward``) and chunk by chunk (``init_state`` / ``step``) with the same weights.

See ``kwskit.layers.base`` for the contract (time on the last axis, ``stride``, ``lookahead``).
"""

from kwskit.layers.base import (FrameSpec, FrameWise, FreqMean, Identity, StreamModule,
                                check_framewise, checked, mask_warmup, stream_init_of,
                                stream_step, total_lookahead)
from kwskit.layers.classifier import StreamClassifier
from kwskit.layers.containers import Add, Residual, StreamSequential, StreamSum
from kwskit.layers.conv import (Delay, DepthwiseConv2d, Frames, PointwiseConv2d, StreamConv1d,
                                StreamConv2d, StreamPool1d, StreamPool2d, TimeWindow,
                                split_padding)
from kwskit.layers.norm import SubSpectralNorm
from kwskit.layers.pool import TimePool

__all__ = [
    "Add", "Delay", "DepthwiseConv2d", "FrameSpec", "FrameWise", "Frames", "FreqMean", "Identity",
    "PointwiseConv2d", "Residual",
    "StreamClassifier", "StreamConv1d", "StreamConv2d", "StreamModule", "StreamPool1d",
    "StreamPool2d", "StreamSequential", "StreamSum", "SubSpectralNorm", "TimePool", "TimeWindow",
    "check_framewise", "checked", "mask_warmup", "stream_init_of", "stream_step",
    "split_padding", "total_lookahead",
]
