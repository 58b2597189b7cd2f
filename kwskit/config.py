"""Typed experiment config: YAML in, validated, overridable with ``--set key=value``, saved with
every run.

A config is a tree of dataclasses. Unknown keys and values of the wrong type end in one
``KwsError`` naming the dotted key (``train.epochs``) and, for typos, the closest valid key.
Front-end, model and augmentation parameters are dicts checked by the code that owns them
(``build_frontend``, ``create_model``, ``AugmentConfig``), which name the field the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kwskit.errors import KwsError


@dataclass
class ModelConfig:
    name: str = "bcresnet1"
    args: dict = field(default_factory=dict)  # extra create_model kwargs (dropout, width, ...)


@dataclass
class DataConfig:
    root: str | None = None  # None: the built-in synthetic data set
    labels: str | list = "mini10"
    silence_share: float = 1.0  # silence clips per split, in units of one keyword's clip count
    unknown_share: float = 1.0  # the same for _unknown_
    # training's _unknown_ share when set (None: unknown_share), so that training can use more
    # of the other words (gsc-dev has ~2.6 x one keyword's count) while validation stays the
    # recipe's
    train_unknown_share: float | None = None
    sample_rate: int = 16000
    clip_samples: int = 16000
    min_clip_fraction: float = 0.1  # clips shorter than this x clip_samples are skipped
    # More _unknown_ training examples from other data sets (e.g. `kwskit data synth DIR
    # --words unknown-vocab`): their words that are not labels, unknown_extra_share x one
    # keyword's clip count of them, added to the training split only.
    unknown_extra: list = field(default_factory=list)
    unknown_extra_share: float = 1.0
    unknown_holdout: list = field(default_factory=list)  # words never used as _unknown_
    # Extra training examples cut from a stream made of training clips (kwskit.data.streams:
    # neighbouring words, pauses, loud stretches), labelled by window_label: this many x one
    # keyword's clip count. 0 = off.
    stream_windows: float = 0.0
    # Share of the training split's speakers whose clips are used (all their words): learning
    # curves. Speakers are kept by a stable hash, so a smaller share is a subset of a larger one.
    train_speakers: float = 1.0
    cache_dir: str | None = None  # None: $KWSKIT_HOME/cache
    num_workers: int = 0


@dataclass
class OptimConfig:
    name: str = "adamw"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-3
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # constant | step | cosine
    warmup_epochs: float = 0.0
    step_epochs: float = 10.0  # step: multiply lr by gamma every step_epochs
    gamma: float = 0.5
    min_lr: float = 0.0  # cosine: final lr


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 100
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool | str = "auto"  # mixed precision: true = on a GPU; "auto" = also bf16 on a CPU with native bf16 units; false = off
    threads: int = 0  # torch CPU threads, 0 = automatic (kwskit.threads.choose_threads)
    eval_batch_size: int = 256
    loss: str = "ce"  # ce | maxpool (kwskit.train.maxpool_loss: max-pooled detection loss)
    loss_context_s: float = 0.5  # maxpool: seconds of another clip in front of each clip
    loss_clip: str = "context"  # maxpool: clip cross-entropy on the clip in its context | bare


@dataclass
class MiningConfig:
    """Hard-negative mining (kwskit.train.mining): ``rounds`` times during training, the current
    model scores ``minutes`` of keyword-free audio built from the training split (other words,
    babble, loud noise); up to ``share`` x one keyword's clip count of the windows whose top
    keyword probability reaches ``threshold`` join the training set as _unknown_ / _silence_."""

    rounds: int = 0  # 0 = off
    minutes: float = 10.0
    threshold: float = 0.3
    share: float = 0.5


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    frontend: dict = field(default_factory=lambda: {"type": "logmel", "n_mels": 40})
    augment: dict = field(default_factory=dict)  # AugmentConfig fields (wave + spec_*); {} = defaults
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# building from plain dicts, with errors that name the key


def _fail(key: str, msg: str):
    raise KwsError(f"config: {key}: {msg}")


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except KwsError:
                pass
        _fail(key, f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        _fail(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            _fail(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(key, f"expected a string, got {value!r}")
        return value
    if tp in (dict,) or origin is dict:
        if not isinstance(value, dict):
            _fail(key, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp in (list,) or origin is list:
        if not isinstance(value, list):
            _fail(key, f"expected a list, got {value!r}")
        return list(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    return value


def _type_name(tp) -> str:
    return {type(None): "null", int: "an integer", float: "a number", str: "a string", bool: "true/false",
            list: "a list", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _build(cls, data, prefix: str = ""):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        _fail(prefix or "<root>", f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(names)})"
            _fail(key, f"unknown key{hint}")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def config_from_dict(data: dict) -> ExperimentConfig:
    cfg = _build(ExperimentConfig, data)
    _check_values(cfg)
    return cfg


def _check_values(cfg: ExperimentConfig) -> None:
    checks = [
        ("train.epochs", cfg.train.epochs >= 1, "must be >= 1"),
        ("train.batch_size", cfg.train.batch_size >= 1, "must be >= 1"),
        ("train.label_smoothing", 0.0 <= cfg.train.label_smoothing < 1.0, "must be in [0, 1)"),
        ("train.grad_clip", cfg.train.grad_clip >= 0, "must be >= 0"),
        ("train.amp", cfg.train.amp in (True, False, "auto"), "must be true, false or auto"),
        ("train.loss", cfg.train.loss in ("ce", "maxpool"), "must be ce or maxpool"),
        ("train.loss_context_s", 0.0 < cfg.train.loss_context_s <= 2.0, "must be in (0, 2] seconds"),
        ("train.loss_clip", cfg.train.loss_clip in ("context", "bare"), "must be context or bare"),
        ("optim.lr", cfg.optim.lr > 0, "must be > 0"),
        ("optim.name", cfg.optim.name in ("adam", "adamw", "sgd"), "must be adam, adamw or sgd"),
        ("schedule.name", cfg.schedule.name in ("constant", "step", "cosine"),
         "must be constant, step or cosine"),
        ("schedule.warmup_epochs", cfg.schedule.warmup_epochs >= 0, "must be >= 0"),
        ("data.silence_share", cfg.data.silence_share >= 0, "must be >= 0"),
        ("data.unknown_share", cfg.data.unknown_share >= 0, "must be >= 0"),
        ("data.train_unknown_share", cfg.data.train_unknown_share is None
         or cfg.data.train_unknown_share >= 0, "must be >= 0 (or null: data.unknown_share)"),
        ("data.num_workers", cfg.data.num_workers >= 0, "must be >= 0"),
        ("data.min_clip_fraction", 0.0 <= cfg.data.min_clip_fraction < 1.0, "must be in [0, 1)"),
        ("data.unknown_extra_share", cfg.data.unknown_extra_share >= 0, "must be >= 0"),
        ("data.stream_windows", cfg.data.stream_windows >= 0, "must be >= 0"),
        ("data.train_speakers", 0.0 < cfg.data.train_speakers <= 1.0, "must be in (0, 1]"),
        # stream windows and mining build their audio from the whole training split
        ("data.train_speakers", cfg.data.train_speakers == 1.0
         or (cfg.data.stream_windows == 0 and cfg.mining.rounds == 0),
         "below 1 cannot be combined with data.stream_windows or mining.rounds (they use every "
         "training speaker)"),
        ("mining.rounds", 0 <= cfg.mining.rounds < cfg.train.epochs,
         "must be >= 0 and below train.epochs (a round happens between epochs)"),
        ("mining.minutes", cfg.mining.minutes > 0, "must be > 0"),
        ("mining.threshold", 0.0 < cfg.mining.threshold < 1.0, "must be a probability in (0, 1)"),
        ("mining.share", cfg.mining.share > 0, "must be > 0"),
        ("data.unknown_extra", all(isinstance(p, str) and p for p in cfg.data.unknown_extra),
         "must be a list of data set folders"),
        ("data.unknown_holdout", all(isinstance(w, str) and w for w in cfg.data.unknown_holdout),
         "must be a list of words"),
    ]
    for key, ok, msg in checks:
        if not ok:
            _fail(key, f"{msg}, got {_get(cfg, key)!r}")


def _get(cfg, key: str):
    obj = cfg
    for part in key.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------
# files and overrides


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``["train.epochs=3", "frontend.n_mels=64"]`` -> nested dict updates (values parsed as YAML)."""
    for item in overrides or []:
        if "=" not in item:
            raise KwsError(f"--set {item}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise KwsError(f"--set {item}: empty key")
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise KwsError(f"--set {key}: '{part}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 reads the keywords yes/no/on/off as booleans,
    which would silently turn ``labels: [yes, no, on, off]`` into ``[True, False, True, False]``."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    not_text = KwsError(f"{path}: not a text (YAML) config file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KwsError(f"{path}: config file not found") from None
    except UnicodeDecodeError:  # e.g. `--config clip.wav`
        raise not_text from None
    except OSError as exc:
        raise KwsError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = parse_yaml(text)
    except yaml.reader.ReaderError:  # control characters (NUL...): binary data that decoded
        raise not_text from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise KwsError(f"{path}:{where} invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KwsError(f"{path}: a config must be a YAML mapping")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML recipe (or start from defaults), apply ``--set`` overrides, validate."""
    data = read_yaml(path) if path else {}
    try:
        cfg = config_from_dict(data)
        if overrides:
            # Overrides apply to the resolved config, so `--set frontend.n_mels=64` edits the
            # recipe's front-end instead of replacing it.
            cfg = config_from_dict(apply_overrides(cfg.to_dict(), overrides))
        return cfg
    except KwsError as exc:
        if path:
            raise KwsError(f"{path}: {exc}") from None
        raise


def budget_overrides(cfg: ExperimentConfig, epochs: int | None = None,
                     batch_size: int | None = None) -> list[str]:
    """``--set`` lines that train ``cfg`` on a budget: the schedule compressed into ``epochs``
    (warm-up and step lengths scaled by epochs / cfg.train.epochs, so the run still warms up,
    decays and ends at its final learning rate) and one batch size (equal optimiser steps per
    epoch for every recipe).

    The warm-up is never squeezed below one epoch (a third of the budget, or the recipe's own
    warm-up, when that is shorter): the BC-ResNet reference code warms up for
    max(1, epochs // 8) epochs, and a 5-of-200 warm-up scaled to 3 epochs (a few dozen steps)
    left BC-ResNet-1 at 78.9% validation accuracy after 3 epochs on gsc-dev against 83.7% with
    one epoch of warm-up."""
    out = []
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            _fail("train.epochs", f"a budget must be a positive number of epochs, got {epochs!r}")
        scale, s = epochs / cfg.train.epochs, cfg.schedule
        warmup = max(s.warmup_epochs * scale, min(1.0, epochs / 3, s.warmup_epochs))
        out += [f"train.epochs={epochs}", f"schedule.warmup_epochs={warmup:g}",
                f"schedule.step_epochs={s.step_epochs * scale:g}"]
    if batch_size is not None:
        out.append(f"train.batch_size={batch_size}")
    return out


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    from kwskit.fsutil import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
