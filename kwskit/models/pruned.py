"""Rebuilding a channel-pruned backbone from its architecture spec.

Structured pruning (``kwskit prune``, kwskit.compress.prune) removes whole channels, so the
modules of a pruned model are narrower than its registered constructor builds them. The arch
spec records, under ``"pruned"``, every backbone module whose sizes changed: the size
attributes that differ (plain ints such as ``out_channels``, ``groups``, ``num_features``,
SubSpectralNorm's ``channels``, a GRU's ``input_size``) and the new shape of each parameter or
buffer that changed::

    "pruned": {"body.conv.conv": {"attrs": {"out_channels": 40},
                                  "tensors": {"weight": [40, 1, 4, 10]}},
               "body.bn": {"attrs": {"num_features": 40},
                           "tensors": {"weight": [40], "bias": [40], "running_mean": [40],
                                       "running_var": [40]}}, ...}

Names are relative to the pipeline's backbone (the front-end is never pruned).
``resize_modules`` (registered under ``"pruned"`` in kwskit.models.io.ARCH_EDITS) gives each
recorded module those sizes on a freshly built model -- zero tensors that the checkpoint's
weights then fill -- so load_model, eval, info, stream, export and ``--resume`` all see the
pruned model.

Why a generic "resize what was recorded" and not torch-pruning's ``tp.state_dict``: the spec
lives in the arch, which must be plain JSON, while ``tp.state_dict`` pickles whole module
``__dict__``s; and loading a pruned run should need neither torch-pruning nor a particular
version of it. Streaming state needs no record: ring buffers, FIFOs and pooling windows take
their shapes from the channel counts when ``stream_init`` runs.
"""

from __future__ import annotations

import torch
from torch import nn

from kwskit.errors import KwsError


def _size_attrs(module: nn.Module) -> dict:
    """The module's public int attributes (channel counts, groups, feature sizes)."""
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and isinstance(v, int) and not isinstance(v, bool)}


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in module._parameters.items() if v is not None}
    tensors.update({k: v for k, v in module._buffers.items() if v is not None})
    return tensors


def record_shapes(pruned: nn.Module, fresh: nn.Module) -> dict:
    """The ``"pruned"`` arch entry: every module of ``pruned`` (a backbone) whose size
    attributes or tensor shapes differ from the same module of ``fresh`` (the backbone its
    arch builds without pruning). JSON types only."""
    reference = dict(fresh.named_modules())
    spec = {}
    for name, module in pruned.named_modules():
        ref = reference.get(name)
        if ref is None or type(ref) is not type(module):
            raise KwsError(f"pruned model: module {name or '(root)'} is not in the model its "
                           "arch builds; only channel counts may change")
        ref_attrs = _size_attrs(ref)
        attrs = {k: v for k, v in _size_attrs(module).items()
                 if k in ref_attrs and v != ref_attrs[k]}
        ref_tensors = _own_tensors(ref)
        tensors = {k: list(t.shape) for k, t in _own_tensors(module).items()
                   if k in ref_tensors and t.shape != ref_tensors[k].shape}
        if attrs or tensors:
            spec[name] = {"attrs": attrs, "tensors": tensors}
    return spec


def _bad(name: str, why: str) -> KwsError:
    return KwsError(f"arch: pruned: {name}: {why}")


def resize_modules(pipeline: nn.Module, spec: dict) -> nn.Module:
    """``pipeline`` with every backbone module in ``spec`` (``record_shapes``) resized in place:
    its recorded attributes set and each recorded tensor replaced by zeros of the recorded
    shape (same dtype, same ``requires_grad``; the weights come from the checkpoint)."""
    if not isinstance(spec, dict):
        raise KwsError(f"arch: pruned: expected a dict of module -> sizes, got {spec!r:.100}")
    backbone = pipeline.backbone
    modules = dict(backbone.named_modules())
    for name, entry in spec.items():
        module = modules.get(name)
        if module is None:
            raise _bad(name, f"no such module in {type(backbone).__name__}")
        if not isinstance(entry, dict) or set(entry) - {"attrs", "tensors"}:
            raise _bad(name, f"expected {{'attrs': ..., 'tensors': ...}}, got {entry!r:.100}")
        attrs, own = _size_attrs(module), _own_tensors(module)
        for key, value in (entry.get("attrs") or {}).items():
            if key not in attrs or isinstance(value, bool) or not isinstance(value, int) \
                    or value < 1:
                raise _bad(name, f"attribute {key}={value!r} is not a size this module has")
            setattr(module, key, value)
        for key, shape in (entry.get("tensors") or {}).items():
            old = own.get(key)
            if old is None or not isinstance(shape, list) or len(shape) != old.dim() \
                    or not all(isinstance(s, int) and s >= 0 for s in shape):
                raise _bad(name, f"tensor {key} with shape {shape!r} does not fit this module")
            new = torch.zeros(shape, dtype=old.dtype, device=old.device)
            # setattr (not _parameters[...]) so an nn.GRU also updates its flat weight list
            setattr(module, key, nn.Parameter(new, requires_grad=old.requires_grad)
                    if isinstance(old, nn.Parameter) else new)
    return pipeline
