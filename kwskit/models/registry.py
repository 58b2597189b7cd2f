"""Model registry: one registered constructor per model size, ``create_model`` the only way in.

A family file decorates its constructors::

    @register_model("dscnn_s", family="dscnn", paper="...", input="2d",
                    frontend={"type": "mfcc", ...}, published={...})
    def dscnn_s(num_classes=12, in_features=10, dropout=0.0, causal=False): ...

Every constructor takes ``num_classes``, ``in_features`` (F, mel/MFCC bins) and ``dropout``.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from kwskit.errors import KwsError

INPUT_KINDS = ("2d", "1d", "wave")


@dataclass
class _Entry:
    name: str
    fn: Callable[..., nn.Module]
    family: str
    paper: str
    input: str
    frontend: dict
    published: dict = field(default_factory=dict)


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str | None = None, *, family: str, paper: str, input: str = "2d",
                   frontend: dict | None = None, published: dict | None = None):
    """Decorator registering a model constructor under ``name`` (default: its function name).

    Args:
        family: the family file's short name ("dscnn", "bcresnet").
        paper: citation of the model's paper.
        input: "2d" (B, 1, F, T) features, "1d" (B, F, T) features, or "wave" (B, samples).
        frontend: the recipe's front-end config (``build_frontend`` dict).
        published: figures from the paper for tables (params, macs, accuracies, source).
    """
    if input not in INPUT_KINDS:
        raise ValueError(f"input must be one of {INPUT_KINDS}, got {input!r}")

    def deco(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        params = inspect.signature(fn).parameters
        missing = [p for p in ("num_classes", "in_features", "dropout") if p not in params]
        if missing:
            raise ValueError(f"constructor of {key!r} lacks the standard argument(s) {missing}")
        _REGISTRY[key] = _Entry(key, fn, family, paper, input, dict(frontend or {"type": "none"}),
                                dict(published or {}))
        return fn

    return deco


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters with shell wildcards ("bcresnet*")."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def _entry(name: str) -> _Entry:
    if name in _REGISTRY:
        return _REGISTRY[name]
    names = list_models()
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise KwsError(f"unknown model {name!r}; {hint}available: {', '.join(names)}")


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def model_info(name: str) -> dict:
    """What is known about a registered model, JSON-able: name, family, paper, input kind,
    the recipe's front-end config, published figures, and the constructor's defaults."""
    e = _entry(name)
    return copy.deepcopy({"name": e.name, "family": e.family, "paper": e.paper,
                          "input": e.input, "frontend": e.frontend, "published": e.published,
                          "defaults": _defaults(e.fn)})


def create_model(name: str, num_classes: int = 12, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with ``num_classes`` outputs.

    Extra keyword arguments go to the constructor (``in_features``, ``dropout``, family
    options); an unknown name or argument raises KwsError naming it.
    """
    e = _entry(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise KwsError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    accepted = [k for k in inspect.signature(e.fn).parameters if k != "num_classes"]
    for k in kwargs:
        if k not in accepted:
            close = difflib.get_close_matches(k, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KwsError(f"{name}: unknown argument {k!r}{hint}; accepted: {', '.join(accepted)}")
    model = e.fn(num_classes=num_classes, **kwargs)
    try:
        model.model_name = e.name
    except AttributeError:  # a model class that exposes model_name read-only
        pass
    return model


# ---------------------------------------------------------------- argument checks for families
def check_positive_int(model: str, field_name: str, value) -> int:
    """``value`` as an int >= 1, else KwsError naming the model and argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KwsError(f"{model}: {field_name} must be a positive integer, got {value!r}")
    return value


def check_probability(model: str, field_name: str, value) -> float:
    """``value`` as a float in [0, 1), else KwsError naming the model and argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise KwsError(f"{model}: {field_name} must be a number in [0, 1), got {value!r}")
    return float(value)
