"""``kwskit distill``, ``quantize``, ``prune`` and ``approx``: arguments and commands.

``add_parsers(subparsers)`` adds the sub-commands to the ``kwskit`` parser; heavy imports
(torch, onnx, the model) happen only when one of them runs. Every command writes a new run
directory (``--out``), so its result is evaluated, streamed and exported like any other run.
"""

from __future__ import annotations


def add_parsers(sub) -> None:
    _add_distill(sub)
    _add_quantize(sub)
    _add_prune(sub)
    _add_approx(sub)


# --- distill -------------------------------------------------------------------------------

def _add_distill(sub) -> None:
    pass


# --- quantize (post-training) and quantization-aware training -------------------------------

def _add_quantize(sub) -> None:
    pass


def _add_qat_args(q) -> None:
    """The ``--qat`` options of ``kwskit quantize``."""


def _qat(a):
    raise NotImplementedError


# --- prune ---------------------------------------------------------------------------------

def _add_prune(sub) -> None:
    pass


# --- approx (hardware approximations) ------------------------------------------------------

def _add_approx(sub) -> None:
    pass
