"""Pretrained keyword spotters shipped inside the package, usable by name.

Every command that takes a run accepts ``pretrained:NAME`` (``kwskit stream pretrained:NAME
talk.wav``, ``eval``, ``info``, ``export``, ``calibrate``, ``distill --teacher``, ...).
``kwskit models --pretrained`` lists the names.

Each model is a small run directory in this package (``kwskit/pretrained/NAME/``): config.yaml,
labels.json, metrics.json, checkpoints/best.pt (weights only, no optimiser state), card.json
(the model card: data, labels, recipe, accuracy, stream misses, size, delay, licence), and
export/ with the streaming ONNX model, so ``kwskit stream`` runs it with ONNX Runtime alone
when PyTorch is not installed. A quantized model is a quantized run (quantization.json and its
int8 ONNX files). The checkpoint and the ONNX files are shipped xz-compressed (``.xz``: a
third of the bytes, mostly padding and repeated graph text) and unpacked in the user's copy.

Commands write into a run (``kwskit eval`` its eval/, ``kwskit export`` its export/), so a
name resolves to a copy under ``$KWSKIT_HOME/pretrained/NAME`` (default ~/.cache/kwskit), made
on first use and refreshed when the package's files change; the package itself is never
written to. ``benchmarks/train_pretrained.py`` builds the models from a clean checkout.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
from pathlib import Path

from kwskit.errors import KwsError
from kwskit.fsutil import kwskit_home

PREFIX = "pretrained:"
HOME = Path(__file__).resolve().parent
CARD = "card.json"
STAMP = ".package-stamp"  # in the copy: the fingerprint of the package files it was made from

# card.json keys printed by `kwskit info pretrained:NAME`, in this order, with their captions
CARD_FIELDS = (
    ("summary", "what"), ("model", "model"), ("labels", "labels"), ("data", "data"),
    ("license", "data licence"), ("recipe", "recipe"), ("epochs", "epochs"),
    ("val_acc", "validation accuracy"), ("stream_misses_at_1fa", "stream misses at 1 FA/h"),
    ("stream_misses_at_10fa", "stream misses at 10 FA/h"),
    ("stream_misses_at_1fa_keyword_free", "misses at 1 keyword-free FA/h"),
    ("params", "params"), ("macs", "MACs per 1-s clip"), ("bytes", "file bytes"),
    ("delay_ms", "streaming delay (ms)"), ("causal", "causal"), ("notes", "notes"),
)


def names() -> list[str]:
    """The shipped models' names, sorted."""
    return sorted(p.parent.name for p in HOME.glob(f"*/{CARD}"))


def is_reference(value) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def source_dir(name: str) -> Path:
    """The package folder of model ``name``; KwsError naming the shipped ones otherwise."""
    if name not in names():
        have = ", ".join(names()) or "none in this installation"
        raise KwsError(f"{PREFIX}{name}: no such pretrained model (shipped: {have}; "
                       "kwskit models --pretrained lists them)")
    return HOME / name


def card(name: str) -> dict:
    """The model card (card.json) of ``name``."""
    path = source_dir(name) / CARD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KwsError(f"{path}: unreadable model card ({exc})") from None


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(f.relative_to(folder)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def resolve(reference: str) -> Path:
    """The run directory ``pretrained:NAME`` stands for: the user's copy of the shipped files
    (made or refreshed here). Files the user's commands added to the copy are kept."""
    name = reference[len(PREFIX):]
    src = source_dir(name)
    dst = kwskit_home() / "pretrained" / name
    stamp = _fingerprint(src)
    if (dst / STAMP).is_file() and (dst / STAMP).read_text() == stamp:
        return dst
    try:
        (dst / STAMP).unlink(missing_ok=True)  # a copy broken off half way is redone next time
        shutil.copytree(src, dst, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.xz"))
        for packed in src.rglob("*.xz"):
            (dst / packed.relative_to(src)).with_suffix("").write_bytes(
                lzma.decompress(packed.read_bytes()))
        (dst / STAMP).write_text(stamp)
    except (OSError, lzma.LZMAError) as exc:
        raise KwsError(f"{reference}: could not copy the model to {dst} ({exc}); set "
                       "KWSKIT_HOME to a writable folder") from None
    return dst


def resolve_args(args, fields=("run", "model", "target", "teacher", "runs", "results")) -> None:
    """Replace every ``pretrained:NAME`` in the parsed command-line ``args`` by its run
    directory (single values and lists); remembers the names in ``args.pretrained``."""
    args.pretrained = {}
    for field in fields:
        value = getattr(args, field, None)
        if is_reference(value):
            args.pretrained[field] = value[len(PREFIX):]
            setattr(args, field, str(resolve(value)))
        elif isinstance(value, list) and any(is_reference(v) for v in value):
            setattr(args, field, [str(resolve(v)) if is_reference(v) else v for v in value])


def format_card(name: str) -> str:
    """The model card as aligned lines (what ``kwskit info pretrained:NAME`` prints first)."""
    c = card(name)
    lines = [f"pretrained:{name}"]
    for key, caption in CARD_FIELDS:
        if c.get(key) is None:
            continue
        value = c[key]
        if key == "labels":
            value = ", ".join(value)
        elif key == "val_acc" or key.startswith("stream_misses_at_"):  # shares, shown as %
            value = f"{100 * value:.2f}%"
        elif key in ("params", "macs", "bytes"):
            value = f"{value:,}"
        lines.append(f"  {caption + ':':31s} {value}")
    return "\n".join(lines)


def listing() -> list[str]:
    """One line per shipped model, name first (``kwskit models --pretrained``)."""
    rows = []
    for name in names():
        c = card(name)
        acc = f"{100 * c['val_acc']:.2f}%" if c.get("val_acc") is not None else "n/a"
        rows.append(f"{name:22s} {c.get('model', ''):14s} val acc {acc:>7s}  "
                    f"{c.get('params', 0):>7,} params  {c.get('summary', '')}")
    return rows
