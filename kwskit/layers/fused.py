"""Fused CPU training steps for BC-ResNet's memory-bound layers.

On a CPU a BC-ResNet training step is bound by passes over whole activations, not arithmetic:
BatchNorm, ReLU, the residual and broadcast adds and the frequency mean each read and write the
(batch, C, F, T) tensor once more, forward and backward. The kernels in
``kwskit/kernels/cpu_training.cpp`` do several of those in one pass:

- ``residual_relu(x, a, b)``: ReLU(x + a + b) with b (N, C, 1, T) broadcast over frequency
  (a BC-ResBlock's output); its backward sums the gradient over frequency for b in the same pass.
- ``sub_band_norm(norm, z, ...)``: training-mode BatchNorm2d or SubSpectralNorm, optionally
  followed by ReLU, optionally returning its output's mean over frequency as well (what the
  block's f1 branch reads).

They run only in CPU training with gradients on, float32 or bfloat16, and only where the kernels
built (``kwskit.kernels``); everything else, and the state dict, is PyTorch's own. BatchNorm's
running statistics are updated as ``nn.BatchNorm2d`` does (momentum, unbiased variance).

The kernels compute what the unfused ops compute, roundings included: under bf16 autocast each
intermediate PyTorch would write as a bf16 tensor (a + b before x is added, the frequency mean,
the mean's gradient added to the norm's) is rounded to bf16 inside the kernel too. A first
version kept those in float32: more precise, it trained BC-ResNet-1 about 1 point worse over
15 epochs (best validation 93.4-93.9% in four runs against 94.5-94.8% unfused; float32
training reaches 93.6-94.3%). With the roundings kept: 94.0 / 94.7% (seeds 0 / 1), and the same
training loss as unfused. So the kernels keep the unfused numbers rather than better ones.
"""

from __future__ import annotations

import torch
from torch import nn

from kwskit.kernels import cpu_training_kernels
from kwskit.layers.containers import StreamSequential
from kwskit.layers.norm import SubSpectralNorm

FUSED_DTYPES = (torch.float32, torch.bfloat16)


def fused_step_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """True where ``module``'s forward on ``x`` may take the fused kernels: a training step on
    a CPU tensor of a supported dtype, with the kernels built, and no forward hooks inside
    ``module`` (a fused step skips submodules' calls, e.g. distillation's feature capture)."""
    return (module.training and torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dim() == 4 and x.dtype in FUSED_DTYPES and not _hooked(module)
            and cpu_training_kernels() is not None)


def _hooked(module: nn.Module) -> bool:
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def fusable_norm(norm: nn.Module) -> bool:
    """A BatchNorm2d (or SubSpectralNorm) whose training step the kernel reproduces: affine,
    float32 parameters, running statistics and a fixed momentum."""
    bn = norm.bn if isinstance(norm, SubSpectralNorm) else norm
    return (type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats
            and bn.momentum is not None and bn.training and bn.weight.dtype == torch.float32)


def uses_cpu_kernels(model: nn.Module) -> bool:
    """Whether ``model`` has layers whose CPU training steps can take the kernels."""
    return any(getattr(m, "uses_cpu_kernels", False) for m in model.modules())


class _ResidualReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, b):
        y = cpu_training_kernels().residual_relu_forward(x, a, b)
        ctx.save_for_backward(y)
        ctx.has_x = x is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        g, g_freq_sum = cpu_training_kernels().residual_relu_backward(grad, y)
        return (g if ctx.has_x else None), g, g_freq_sum


def residual_relu(x: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ReLU(x + a + b), b (N, C, 1, T) broadcast over frequency; x may be None (no shortcut).
    The inputs are brought to their common dtype first, as the unfused adds would."""
    parts = [t for t in (x, a, b) if t is not None]
    dtype = parts[0].dtype
    for t in parts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    x, a, b = (None if t is None else t.to(dtype).contiguous() for t in (x, a, b))
    return _ResidualReLU.apply(x, a, b)


class _SubBandNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, bias, bands, eps, relu, freq_mean):
        y, m, mean, invstd, var = cpu_training_kernels().sub_band_norm_forward(
            z, weight, bias, bands, eps, relu, freq_mean)
        ctx.save_for_backward(z, y if relu else None, weight, mean, invstd)
        ctx.bands = bands
        ctx.mark_non_differentiable(mean, var)
        return (y, m, mean, var) if freq_mean else (y, mean, var)

    @staticmethod
    def backward(ctx, grad_y, *rest):
        z, y, weight, mean, invstd = ctx.saved_tensors
        grad_m = rest[0] if len(rest) == 3 else None
        gz, gw, gb = cpu_training_kernels().sub_band_norm_backward(
            grad_y, grad_m, z, y, weight, mean, invstd, ctx.bands)
        return gz, gw.to(weight.dtype), gb.to(weight.dtype), None, None, None, None


def sub_band_norm(norm: nn.Module, z: torch.Tensor, relu: bool = False,
                  freq_mean: bool = False):
    """``norm`` (a BatchNorm2d or SubSpectralNorm in training mode, ``fusable_norm``) on ``z``,
    then ReLU if ``relu``; returns the output, or (output, its mean over frequency keepdim)
    with ``freq_mean``. Updates the running statistics as BatchNorm2d does."""
    bands = norm.sub_bands if isinstance(norm, SubSpectralNorm) else 1
    bn = norm.bn if isinstance(norm, SubSpectralNorm) else norm
    out = _SubBandNorm.apply(z.contiguous(), bn.weight, bn.bias, bands, bn.eps, relu, freq_mean)
    mean, var = out[-2:]
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        bn.running_mean.lerp_(mean.view_as(bn.running_mean).to(bn.running_mean.dtype), bn.momentum)
        bn.running_var.lerp_(var.view_as(bn.running_var).to(bn.running_var.dtype), bn.momentum)
    return (out[0], out[1]) if freq_mean else out[0]


class NormReLUSequential(StreamSequential):
    """A StreamSequential whose CPU training steps run each BatchNorm2d directly followed by
    nn.ReLU as one ``sub_band_norm(..., relu=True)``. The same modules and state-dict keys as
    StreamSequential; every other mode is StreamSequential's own."""

    uses_cpu_kernels = True

    def forward(self, x):
        return self.forward_range(x)

    def forward_range(self, x, start: int = 0, stop: int | None = None):
        """Layers ``start:stop`` on ``x``, BatchNorm2d + ReLU pairs fused where they apply
        (each pair checked on its own two modules: a hook elsewhere does not stop it)."""
        layers = list(self)[start:stop]
        i = 0
        while i < len(layers):
            layer = layers[i]
            pair = (i + 1 < len(layers) and type(layer) is nn.BatchNorm2d
                    and type(layers[i + 1]) is nn.ReLU and fusable_norm(layer)
                    and fused_step_applies(layer, x) and not _hooked(layers[i + 1]))
            x = sub_band_norm(layer, x, relu=True) if pair else layer(x)
            i += 2 if pair else 1
        return x
