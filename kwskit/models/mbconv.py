"""MBConv networks: the search space of architecture search for KWS, and the models it finds.

Peter, Roth, Pernkopf, "Resource-efficient DNNs for Keyword Spotting using Neural Architecture
Search and Quantization", ICPR 2020, arXiv:2012.10138, search ProxylessNAS-style (Cai, Zhu,
Han, ICLR 2019, arXiv:1812.00332) over a stack of layers that each choose a mobile inverted
bottleneck (MBConv, Sandler et al. 2018, arXiv:1801.04381) or nothing. This file holds the
space and builds any point of it; the search itself lives in kwskit.compress.nas.

    MFCC (1, F, T) -> stem: conv (3 freq x 5 time), stride 2x2 -> BN -> ReLU
                   -> stages of searchable layers (the first of a stage may change width and
                      stride both axes; the others keep the shape and may be skipped)
                   -> mean over frequency -> average over time -> dropout -> linear

A layer's op is ``kKeE``: 1x1 expansion to E x the input channels, a depthwise K x K conv
(frequency x time, the stride of the layer), a 1x1 projection; BN after each, ReLU after the
first two; an identity shortcut where the shape is kept. Unlike MobileNetV2's E = 1 block, E = 1
keeps its 1x1 expansion (c_in -> c_in): the search's supernet shares one expansion's weights
across every E (kwskit.compress.nas.SharedMBConv), and the found model must be what was searched. ``skip`` leaves
the layer out. Every time-mixing conv is a StreamConv2d, so every model in the space streams
('same' padding with a delay, or ``causal=True``) and exports like the rest of the zoo.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from kwskit.errors import KwsError
from kwskit.layers import FreqMean, Residual, StreamClassifier, StreamConv2d, StreamSequential
from kwskit.models.registry import check_positive_int, check_probability, register_model

PAPER = ("Peter, Roth, Pernkopf 2020, Resource-efficient DNNs for Keyword Spotting using Neural "
         "Architecture Search and Quantization, arXiv:2012.10138")
# Hello Edge's MFCC front-end (40 ms windows every 20 ms: 49 frames), as in 001's comparison
FRONTEND = {"type": "mfcc", "n_mfcc": 10, "n_mels": 40, "win_length": 640, "hop_length": 320,
            "n_fft": 1024, "f_min": 20.0, "f_max": 4000.0}
KERNELS = (3, 5, 7)
EXPANSIONS = (1, 3, 6)
SKIP = "skip"
# (channels, layers, stride of the first layer in frequency and time)
STAGES = ((24, 2, 1), (40, 3, 2), (64, 3, 1))
STEM_CHANNELS = 16
STEM_KERNEL = (3, 5)
STEM_STRIDE = (2, 2)
DEFAULT_OPS = ("k3e3", "k3e3", "k5e3", "k3e3", "skip", "k3e3", "skip", "skip")


def op_name(kernel: int, expansion: int) -> str:
    return f"k{kernel}e{expansion}"


def candidate_ops(kernels=KERNELS, expansions=EXPANSIONS) -> list[str]:
    """Every MBConv op of the space, cheapest kernel first (``skip`` not included)."""
    return [op_name(k, e) for e in expansions for k in kernels]


def parse_op(op: str, where: str) -> tuple[int, int] | None:
    """(kernel, expansion) of an op name, None for ``skip``; KwsError naming ``where``."""
    if op == SKIP:
        return None
    try:
        k, e = op[1:].split("e")
        kernel, expansion = int(k), int(e)
        if op[0] != "k" or kernel < 1 or kernel % 2 == 0 or expansion < 1:
            raise ValueError
    except (ValueError, TypeError, IndexError):
        raise KwsError(f"{where}: op {op!r} is not 'skip' or kKeE with an odd kernel K and an "
                       f"expansion E >= 1 (e.g. k3e1, k5e3, k7e6)") from None
    return kernel, expansion


def scaled(channels: int, width_mult: float, divisor: int = 4) -> int:
    """Channels times the width multiplier, rounded to a multiple of ``divisor`` (at least one)."""
    return max(divisor, int(round(channels * width_mult / divisor)) * divisor)


@dataclass(frozen=True)
class Slot:
    """One searchable layer: its input and output channels, stride, and whether it may be
    skipped (only where it keeps the shape, so the identity stands in for it)."""

    c_in: int
    c_out: int
    stride: int

    @property
    def can_skip(self) -> bool:
        return self.stride == 1 and self.c_in == self.c_out


def layer_slots(stages=STAGES, stem_channels: int = STEM_CHANNELS,
                width_mult: float = 1.0, where: str = "mbconv_net") -> list[Slot]:
    """The searchable layers of a space, in order."""
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise KwsError(f"{where}: width_mult must be a positive number, got {width_mult!r}")
    try:
        stages = [tuple(int(v) for v in s) for s in stages]
        if not stages or any(len(s) != 3 or min(s) < 1 for s in stages):
            raise ValueError
    except (TypeError, ValueError):
        raise KwsError(f"{where}: stages must be a list of [channels, layers, stride] with "
                       f"positive integers, got {stages!r}") from None
    c = scaled(check_positive_int(where, "stem_channels", stem_channels), width_mult)
    slots = []
    for channels, layers, stride in stages:
        out = scaled(channels, width_mult)
        for i in range(layers):
            slots.append(Slot(c, out, stride if i == 0 else 1))
            c = out
    return slots


def mbconv_body(kernel: int, expansion: int, slot: Slot, padding: str) -> StreamSequential:
    """Expand (1x1) -> depthwise KxK (the slot's stride) -> project (1x1), without shortcut."""
    hidden = slot.c_in * expansion
    layers = OrderedDict(expand=nn.Conv2d(slot.c_in, hidden, 1, bias=False),
                         expand_bn=nn.BatchNorm2d(hidden), expand_relu=nn.ReLU())
    layers.update(dw=StreamConv2d(hidden, hidden, kernel, stride=slot.stride, groups=hidden,
                                  bias=False, padding=padding),
                  dw_bn=nn.BatchNorm2d(hidden), dw_relu=nn.ReLU(),
                  project=nn.Conv2d(hidden, slot.c_out, 1, bias=False),
                  project_bn=nn.BatchNorm2d(slot.c_out))
    return StreamSequential(layers)


def build_layer(op: str, slot: Slot, padding: str, where: str, shortcut: bool = True):
    """The module of ``op`` in ``slot``: an MBConv (with its identity shortcut where the shape
    is kept, unless ``shortcut`` is False), or None for ``skip``."""
    parsed = parse_op(op, where)
    if parsed is None:
        if not slot.can_skip:
            raise KwsError(f"{where}: 'skip' is not allowed here (the layer changes the shape "
                           f"{slot.c_in}->{slot.c_out} channels, stride {slot.stride})")
        return None
    body = mbconv_body(*parsed, slot, padding)
    return Residual(body) if shortcut and slot.can_skip else body


def build_stem(in_channels_out: int, padding: str, kernel=STEM_KERNEL, stride=STEM_STRIDE):
    return StreamSequential(OrderedDict(
        conv=StreamConv2d(1, in_channels_out, tuple(kernel), stride=tuple(stride), bias=False,
                          padding=padding),
        bn=nn.BatchNorm2d(in_channels_out), relu=nn.ReLU()))


def build_head(channels: int, num_classes: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))


class MBConvNet(StreamClassifier):
    """A point of the MBConv space (module doc) on (batch, 1, in_features, frames) features.

    Args:
        num_classes: output classes.
        in_features: MFCC / mel bins (F).
        ops: one op per searchable layer (``kKeE`` or ``skip``), as many as the stages have
            layers.
        stages: [channels, layers, stride] per stage, before the width multiplier.
        stem_channels: the stem conv's output channels, before the width multiplier.
        width_mult: every channel count times this (rounded to a multiple of 4).
        dropout: dropout before the classifier.
        causal: pad time causally (no look-ahead) instead of 'same'.
    """

    def __init__(self, num_classes: int, in_features: int = 10, ops=DEFAULT_OPS, stages=STAGES,
                 stem_channels: int = STEM_CHANNELS, width_mult: float = 1.0,
                 dropout: float = 0.0, causal: bool = False, where: str = "mbconv_net"):
        pad = "causal" if causal else "same"
        slots = layer_slots(stages, stem_channels, width_mult, where)
        if isinstance(ops, str) or len(ops) != len(slots):
            raise KwsError(f"{where}: ops must list one op per layer ({len(slots)} for stages "
                           f"{[list(s) for s in stages]}), got {ops!r}")
        layers = OrderedDict(stem=build_stem(slots[0].c_in, pad))
        for i, (op, slot) in enumerate(zip(ops, slots)):
            m = build_layer(op, slot, pad, f"{where}: ops[{i}]")
            if m is not None:
                layers[f"layer{i}"] = m
        layers["freq_mean"] = FreqMean()
        super().__init__(StreamSequential(layers), build_head(slots[-1].c_out, num_classes, dropout),
                         in_features=in_features, input_kind="2d")
        self.num_classes = num_classes
        self.ops = list(ops)


@register_model("mbconv_net", family="nas", paper=PAPER, input="2d", frontend=FRONTEND)
def mbconv_net(num_classes: int = 12, in_features: int = 10, dropout: float = 0.0,
               causal: bool = False, ops=DEFAULT_OPS, stages=STAGES,
               stem_channels: int = STEM_CHANNELS, width_mult: float = 1.0) -> MBConvNet:
    """An MBConv network of the search space; ``kwskit nas`` writes the ``ops`` it found
    (the default ops are a hand-picked point, 13.6 K params and 1.2 M MACs for 12 classes)."""
    check_positive_int("mbconv_net", "num_classes", num_classes)
    check_positive_int("mbconv_net", "in_features", in_features)
    dropout = check_probability("mbconv_net", "dropout", dropout)
    return MBConvNet(num_classes, in_features, list(ops), stages, stem_channels, width_mult,
                     dropout, bool(causal))
