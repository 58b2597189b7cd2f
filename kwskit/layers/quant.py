"""Quantization-aware training (QAT): fake quantization with the straight-through estimator,
BatchNorm folded into the conv before its weights are quantized.

``apply_qat(pipeline, spec)`` replaces every ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` of
the backbone by a ``QuantConv`` that computes in float with the values integer inference
would use (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", arXiv:1712.05877):

- **BatchNorm folding.** A BatchNorm1d/2d that directly follows a conv in a sequential
  container (``StreamSequential`` / ``nn.Sequential``, the conv bare or inside a
  ``StreamConv1d/2d``) moves into the conv: ``w' = w * gamma / sqrt(var + eps)``,
  ``b' = beta + (b - mean) * gamma / sqrt(var + eps)``, and its place becomes an identity. The
  weights quantized are the folded ones, i.e. those integer hardware holds. Folding uses the
  running statistics, which stay frozen during QAT (a fine-tuning of a trained model; frozen
  statistics as recommended by Krishnamoorthi 2018, arXiv:1806.08342, sec. 3.2.1); gamma,
  beta and the conv weights train. Norms that do not fold into a per-channel conv (BC-ResNet's
  SubSpectralNorm, whose statistics differ per frequency band) stay float affine maps.
- **Weights**: per output channel, symmetric, n bits. n >= 2: ``2^(n-1) - 1`` levels each
  side of zero (8 bits: -127..127, 4 bits: -7..7, 2 bits: -1, 0, 1 -- ternary), so at most
  ``2^n - 1`` values per channel. The scale is max|w| / 127 at 8 bits; below 8 bits the
  per-channel clipping range that minimises the weights' quantization MSE (a grid over
  5-100% of max|w|, recomputed every step; MSE range setting as in Nagel et al. 2021,
  "A White Paper on Neural Network Quantization", arXiv:2106.08295). n = 1: XNOR-Net's
  ``sign(w) * mean|w|`` per output channel (Rastegari et al. 2016, arXiv:1603.05279).
- **Activations**: the input of every quantized layer (of a StreamConv1d/2d before it pads
  or buffers time, ``QuantInput``), per tensor, asymmetric (a zero point that represents 0.0
  exactly, so zero padding is exact), n bits. The range is tracked, not
  learned: min/max over the calibration batches, then an exponential moving average of each
  training batch's min/max (Jacob et al. sec. 3.1); frozen in eval mode. So in eval mode the
  quantizers are element-wise maps and a QAT model streams exactly like its whole-clip forward.
- **Gradients**: the straight-through estimator (Bengio et al. 2013, arXiv:1308.3432):
  rounding passes the gradient unchanged, clipping stops it outside the range; the 1-bit sign
  passes it unchanged. The float weights are what the optimiser updates (weights at 8/4/2/1
  bits trained with the STE as in arXiv:2012.10138).

Export: n-bit values are written through torch's ``fake_quantize_per_channel_affine`` /
``fake_quantize_per_tensor_affine`` with int8 / uint8 ranges (values clipped to the n-bit
range first), which the ONNX exporter turns into QuantizeLinear / DequantizeLinear pairs.
ONNX Runtime folds the weights' pair into int8 constants and fuses DQ -> (Pad ->) Conv
(-> ReLU) -> Q into integer kernels (QLinearConv) wherever a quantizer follows the conv
(DS-CNN-S: 8 of its 9 convs). 1-bit weights export as float sign math.

The ``spec`` recorded under the arch key ``"qat"`` (``kwskit.models.io.ARCH_EDITS``)::

    {"weight_bits": 4, "act_bits": 8, "first_last_bits": 8}

``first_last_bits`` (None: same as ``weight_bits``) sets the weight bits of the first and the
last quantized layer, which common practice keeps at 8 bits (XNOR-Net, DoReFa, LSQ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers.base import StreamModule
from kwskit.layers.conv import TimeWindow

WEIGHT_BITS = range(1, 9)
ACT_BITS = range(4, 9)
_CLIP_GRID = 20  # MSE search: clipping ratios 1/20 ... 20/20 of max|w|


def _register_meta_kernel() -> torch.library.Library | None:
    """torch has no shape-only (Meta) kernel for the op behind
    ``fake_quantize_per_tensor_affine`` with tensor scale / zero point, so ``torch.export``
    with a dynamic batch (the clip export) cannot trace it; this adds one."""
    op = "_fake_quantize_per_tensor_affine_cachemask_tensor_qparams"

    def meta(x, scale, zero_point, enabled, quant_min, quant_max):
        return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)

    lib = torch.library.Library("aten", "IMPL")
    try:
        lib.impl(op, meta, "Meta")
    except RuntimeError:  # a torch that has one already
        return None
    return lib


_META_LIB = _register_meta_kernel()


def check_qat_spec(spec) -> dict:
    """The QAT spec with defaults filled in; KwsError naming the bad field."""
    if not isinstance(spec, dict):
        raise KwsError("qat: expected a dict like {'weight_bits': 8, 'act_bits': 8}, "
                       f"got {spec!r:.100}")
    unknown = sorted(set(spec) - {"weight_bits", "act_bits", "first_last_bits"})
    if unknown:
        raise KwsError(f"qat: unknown key(s) {', '.join(unknown)} "
                       "(weight_bits, act_bits, first_last_bits)")
    out = {"weight_bits": spec.get("weight_bits", 8), "act_bits": spec.get("act_bits", 8),
           "first_last_bits": spec.get("first_last_bits", 8)}
    for key, allowed in (("weight_bits", WEIGHT_BITS), ("act_bits", ACT_BITS),
                         ("first_last_bits", WEIGHT_BITS)):
        v = out[key]
        if key == "first_last_bits" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v not in allowed:
            raise KwsError(f"qat: {key} must be an integer from {allowed.start} to "
                           f"{allowed.stop - 1}, got {v!r}")
    return out


# ------------------------------------------------------------------------------ weights
def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(C,) -> shaped to broadcast over ``like``'s output-channel axis 0."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel step size (C,) of symmetric ``bits``-bit weights (module doc);
    at 1 bit the XNOR-Net scale mean|w|. No gradient flows through it."""
    flat = w.detach().flatten(1)
    if bits == 1:
        return flat.abs().mean(1).clamp_min(1e-12)
    qmax = 2 ** (bits - 1) - 1
    amax = flat.abs().amax(1).clamp_min(1e-12)
    if bits >= 8:
        return amax / qmax
    ratios = torch.arange(1, _CLIP_GRID + 1, dtype=w.dtype, device=w.device) / _CLIP_GRID
    cand = ratios[:, None] * amax[None, :] / qmax  # (G, C)
    q = torch.clamp(torch.round(flat[None] / cand[..., None]), -qmax, qmax) * cand[..., None]
    best = (q - flat[None]).pow(2).sum(-1).argmin(0)  # (C,)
    return cand.gather(0, best[None]).squeeze(0)


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` rounded to ``bits`` bits per output channel (axis 0), straight-through gradient."""
    scale = weight_scale(w, bits)
    if bits == 1:
        binary = torch.where(w >= 0, 1.0, -1.0).to(w.dtype) * _per_channel(scale, w)
        return binary + (w - w.detach())  # the binary values exactly, gradient 1 to w
    if bits < 8:  # the n-bit range inside int8: clip first (no gradient outside it)
        top = _per_channel(scale * (2 ** (bits - 1) - 1), w)
        w = torch.maximum(torch.minimum(w, top), -top)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale.float(), zero, 0, -128, 127)


# ------------------------------------------------------------------------------ activations
def act_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int):
    """(scale, zero point) of an asymmetric ``bits``-bit range that holds [lo, hi] and 0.0."""
    qmax = 2 ** bits - 1
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = ((hi - lo) / qmax).clamp_min(1e-8)
    zero = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero


def fake_quant_act(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` rounded to ``bits``-bit steps of the range [lo, hi] (per tensor), straight-through
    gradient inside the range."""
    scale, zero = act_qparams(lo, hi, bits)
    if bits < 8:  # the n-bit range inside uint8
        x = torch.clamp(x, -zero * scale, (2 ** bits - 1 - zero) * scale)
    return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()).float(),
                                                 zero.reshape(()).to(torch.int32), 0, 255)


class ActQuant(nn.Module):
    """Per-tensor activation fake quantizer with a tracked range (buffers ``lo``, ``hi``).

    Training mode: the range follows an exponential moving average (``momentum``) of each
    batch's min/max, then the batch is quantized with it. ``calibrating = True``: the range
    grows to the min/max of everything seen, and values pass unquantized. Eval mode: the
    frozen range, an element-wise map.
    """

    def __init__(self, bits: int, momentum: float = 0.01):
        super().__init__()
        self.bits, self.momentum = int(bits), float(momentum)
        self.calibrating = False
        self.register_buffer("lo", torch.zeros(1))
        self.register_buffer("hi", torch.zeros(1))
        self.register_buffer("seen", torch.zeros(1))  # batches observed (0: range not set)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min().reshape(1).float(), x.max().reshape(1).float()
        if self.seen.item() == 0:
            self.lo.copy_(lo)
            self.hi.copy_(hi)
        elif self.calibrating:
            self.lo.copy_(torch.minimum(self.lo, lo))
            self.hi.copy_(torch.maximum(self.hi, hi))
        else:
            self.lo.lerp_(lo, self.momentum)
            self.hi.lerp_(hi, self.momentum)
        self.seen += 1

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        """``observe=False``: quantize with the range as it is (a second use of one range)."""
        if x.device.type == "meta":  # shape probes (kwskit.layers.base.frame_shape)
            return x
        if self.calibrating:
            if observe:
                self._observe(x.detach())
            return x
        if self.training and observe:
            self._observe(x.detach())
        return fake_quant_act(x, self.lo, self.hi, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}"


# ------------------------------------------------------------------------------ layers
def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module):
    """(weight, bias) of the conv/linear followed by eval-mode ``bn``, as one layer."""
    inv = torch.rsqrt(bn.running_var + bn.eps)
    gain = bn.weight * inv if bn.affine else inv
    shift = -bn.running_mean * gain
    if bn.affine:
        shift = shift + bn.bias
    if bias is not None:
        shift = shift + bias * gain
    return weight * _per_channel(gain, weight), shift


class QuantConv(nn.Module):
    """A conv (1-D / 2-D) or linear ``layer`` that computes with fake-quantized weights --
    BatchNorm ``bn`` folded in first, when given -- on fake-quantized input.

    ``shared_act``: the input was quantized already by this quantizer (``QuantInput``, before
    time padding / buffering); it is quantized again with the same range, which changes no
    value but puts a quantizer right before the conv, where ONNX Runtime looks for one.
    """

    def __init__(self, layer: nn.Module, bn: nn.Module | None, weight_bits: int, act_bits: int,
                 shared_act: ActQuant | None = None):
        super().__init__()
        self.layer = layer
        self.bn = bn
        self.act = ActQuant(act_bits) if shared_act is None else None
        self.__dict__["_shared_act"] = shared_act  # not registered: its owner holds its state
        self.weight_bits = int(weight_bits)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's float (weight, bias) with the BatchNorm folded in."""
        w, b = self.layer.weight, self.layer.bias
        return (w, b) if self.bn is None else fold_batchnorm(w, b, self.bn)

    def quantized_weight(self) -> torch.Tensor:
        return fake_quant_weight(self.folded()[0], self.weight_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x) if self.act is not None else self._shared_act(x, observe=False)
        w, b = self.folded()
        if x.device.type != "meta":
            w = fake_quant_weight(w, self.weight_bits)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, b)
        return self.layer._conv_forward(x, w, b)

    def extra_repr(self) -> str:
        return f"weight_bits={self.weight_bits}, bn_folded={self.bn is not None}"


class QuantInput(StreamModule):
    """A time-window layer (StreamConv1d/2d) whose input is quantized before the layer pads
    or buffers it: zero padding is exact in the quantized domain, so this is the value the
    conv sees either way, and in the ONNX graph the quantizer sits right after the previous
    layer's activation, so ONNX Runtime can fuse that layer into an integer kernel too."""

    def __init__(self, window: StreamModule, act: ActQuant):
        super().__init__()
        self.window = window
        self.act = act

    @property
    def stride(self) -> int:
        return self.window.stride

    @property
    def lookahead(self) -> int:
        return self.window.lookahead

    def forward(self, x):
        return self.window(self.act(x))

    def stream_init(self, batch, spec, device=None, dtype=None):
        return self.window.stream_init(batch, spec, device, dtype)

    def step(self, x, states):
        return self.window.step(self.act(x), states)


_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _inner_layer(module: nn.Module):
    """The conv a sequential child computes with: itself, or a StreamConv's ``.conv``."""
    if isinstance(module, _LAYERS):
        return module
    if isinstance(module, TimeWindow) and isinstance(getattr(module, "conv", None), _LAYERS):
        return module.conv
    return None


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(layer, (nn.Conv1d, nn.Conv2d)) and isinstance(bn, _BATCHNORMS)
            and bn.running_var is not None and bn.num_features == layer.out_channels)


def quantizable_layers(root: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) of every conv / linear under ``root``, in module order."""
    found = []
    for parent in root.modules():
        for name, child in parent.named_children():
            if isinstance(child, _LAYERS):
                found.append((parent, name, child))
    return found


def batchnorm_pairs(root: nn.Module) -> dict[int, tuple[nn.Module, str, nn.Module]]:
    """id(conv) -> (container, attribute, BatchNorm) for every BatchNorm that directly follows
    a conv in a sequential container (the order of its children is the order they run in)."""
    from kwskit.layers.containers import StreamSequential

    pairs = {}
    for parent in root.modules():
        if not isinstance(parent, (StreamSequential, nn.Sequential)):
            continue
        children = list(parent.named_children())
        for (_, a), (name, b) in zip(children, children[1:]):
            layer = _inner_layer(a)
            if layer is not None and _foldable(layer, b):
                pairs[id(layer)] = (parent, name, b)
    return pairs


def apply_qat(pipeline: nn.Module, spec: dict) -> nn.Module:
    """Make ``pipeline``'s backbone quantization-aware as ``spec`` says (module doc); the
    front-end stays float. Weights are kept (a trained model becomes its QAT start), so this
    is also how ``build_from_arch`` rebuilds a QAT run. Returns the pipeline."""
    spec = check_qat_spec(spec)
    backbone = pipeline.backbone
    if any(isinstance(m, QuantConv) for m in backbone.modules()):
        raise KwsError("qat: this model is quantization-aware already")
    layers = quantizable_layers(backbone)
    if not layers:
        raise KwsError(f"qat: {type(backbone).__name__} has no conv or linear layer to quantize")
    pairs = batchnorm_pairs(backbone)
    parents = {id(m): (parent, name) for parent in backbone.modules()
               for name, m in parent.named_children()}
    ends = {id(layers[0][2]), id(layers[-1][2])}
    for parent, name, layer in layers:
        bits = spec["weight_bits"]
        if id(layer) in ends and spec["first_last_bits"] is not None:
            bits = spec["first_last_bits"]
        bn = None
        if id(layer) in pairs:
            container, bn_name, bn = pairs[id(layer)]
            setattr(container, bn_name, nn.Identity())
        if isinstance(parent, TimeWindow) and id(parent) in parents:  # before it pads
            act = ActQuant(spec["act_bits"])
            setattr(parent, name, QuantConv(layer, bn, bits, spec["act_bits"], shared_act=act))
            outer, attr = parents[id(parent)]
            setattr(outer, attr, QuantInput(parent, act))
        else:
            setattr(parent, name, QuantConv(layer, bn, bits, spec["act_bits"]))
    pipeline.qat_spec = spec
    return pipeline


def set_calibrating(model: nn.Module, on: bool) -> None:
    """Switch every ActQuant of ``model`` to calibration (range = min/max seen, no rounding)."""
    for m in model.modules():
        if isinstance(m, ActQuant):
            m.calibrating = on
