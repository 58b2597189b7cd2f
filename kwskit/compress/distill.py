"""Knowledge distillation: a trained teacher run guides a smaller student through the loss.

``Distillation`` is an objective for the training loop's loss seam (kwskit.train.loop.fit:
``objective(net, wave, target) -> (loss, logits)``); the loop itself does not change. The
loss adds up to three terms to the hard-label cross-entropy:

- **Logits** (Hinton, Vinyals, Dean 2015, arXiv:1503.02531): ``alpha * T^2 *
  KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)`` with the config's label
  smoothing in the cross-entropy. The T^2 keeps the soft term's gradients at the hard term's
  scale whatever the temperature.
- **Features** (FitNets, Romero et al. 2014, arXiv:1412.6550): ``feature_weight * MSE`` between
  a student feature map, through a learned 1x1 projection when the channel counts differ, and
  the teacher's map, both averaged (adaptive pooling) onto the smaller of their frequency and
  time grids. The projection belongs to the objective, so fit() trains it with the model; it
  is not part of the student run (the student alone is saved).
- **Attention over time** (the attention-transfer idea of Zagoruyko & Komodakis 2016,
  arXiv:1612.03928, applied to time): ``attention_weight * KL(teacher || student)`` between two
  distributions over the body's output frames. A model whose classifier pools with attention
  (CRNN's ``AttentionPool``) gives its pooling weights softmax(e_t); any other model gives the
  activation map of its last feature map: the mean of squared activations over channels (and
  frequency) per frame, normalised over time. ``describe()`` says which each side uses.

Divergences: KL for the two distributions (class posteriors, attention over time), MSE for
the feature maps.

The teacher (``load_teacher``: eval mode, frozen, run under no_grad) sees exactly the batch of
waves the student gets, after the waveform augmentation (noise, shift, gain); SpecAugment sits
inside the student's pipeline, on its features, so the teacher sees the wave without it. The
teacher's labels must be the student's, in the same order.

Feature maps are picked by module name inside the pipeline (``pipeline.get_submodule``) and
read with forward hooks. The default, ``backbone.body``, is the last feature map before the
classifier's pooling, (batch, channels, frames) for every kwskit model; a deeper one is named
by its path, e.g. ``backbone.body.conv`` (list them with ``[n for n, _ in
pipeline.named_modules()]``). A named module must output (batch, channels, frames) or
(batch, channels, freq, frames).
"""

from __future__ import annotations

import contextlib
import difflib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kwskit.errors import KwsError
from kwskit.layers.recurrent import AttentionPool

BODY = "backbone.body"  # the last feature map before the classifier's pooling


# ------------------------------------------------------------------------------ the divergences
def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=-1),
                    F.log_softmax(teacher_logits.float() / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t


def activation_attention(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, T) or (B, C, F, T) -> (B, T): mean squared activation per frame, summing to 1."""
    energy = feature_map.float().pow(2).flatten(1, -2).mean(dim=1)
    return energy / energy.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def _resample(p: torch.Tensor, frames: int) -> torch.Tensor:
    """A distribution over time (B, T) averaged onto ``frames`` bins, summing to 1 again."""
    if p.shape[-1] == frames:
        return p
    q = F.adaptive_avg_pool1d(p.unsqueeze(1), frames).squeeze(1)
    return q / q.sum(dim=-1, keepdim=True)


def attention_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between (B, T) distributions over time, averaged over the batch;
    on different frame counts both are averaged onto the shorter grid first."""
    frames = min(teacher.shape[-1], student.shape[-1])
    teacher, student = _resample(teacher.float(), frames), _resample(student.float(), frames)
    return F.kl_div(student.clamp_min(1e-12).log(), teacher, reduction="batchmean")


class FeatureHint(nn.Module):
    """FitNets hint loss: MSE(projection(student map), teacher map).

    The projection is a 1x1 convolution from the student's channels to the teacher's (none
    when they match). Both maps are averaged onto the smaller of their (freq, time) grids
    first (a 3-D map has one frequency bin); averaging and a 1x1 projection commute, so the
    student's map is pooled before it is projected.
    """

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.proj = (nn.Identity() if student_channels == teacher_channels
                     else nn.Conv2d(student_channels, teacher_channels, kernel_size=1))

    @staticmethod
    def _as_4d(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(2) if x.dim() == 3 else x

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = self._as_4d(student.float()), self._as_4d(teacher.float())
        grid = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        s, t = F.adaptive_avg_pool2d(s, grid), F.adaptive_avg_pool2d(t, grid)
        return F.mse_loss(self.proj(s), t)


# ------------------------------------------------------------------------------ feature maps
@contextlib.contextmanager
def capture(model: nn.Module, names):
    """A dict filled with the outputs of ``model``'s named submodules (forward hooks) during
    the forward passes inside the block; a tuple output keeps its first tensor."""
    maps: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, output):
            maps[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()


def check_layer(pipeline: nn.Module, name: str, role: str) -> None:
    """KwsError naming the closest module names when ``pipeline`` has no module ``name``."""
    names = [n for n, _ in pipeline.named_modules() if n]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(names[:4])}"
        raise KwsError(f"--{role}-layer: the {role} has no module {name!r} ({hint})")


@torch.no_grad()
def _probe_maps(pipeline: nn.Module, names, clip_samples: int) -> dict[str, torch.Tensor]:
    """The named feature maps of ``pipeline`` on one silent clip (eval mode restored after)."""
    was_training = pipeline.training
    pipeline.eval()
    try:
        with capture(pipeline, names) as maps:
            pipeline(torch.zeros(1, clip_samples))
    finally:
        pipeline.train(was_training)
    for name, m in maps.items():
        if not torch.is_tensor(m) or m.dim() not in (3, 4):
            raise KwsError(f"feature map {name!r}: expected (batch, channels, [freq,] frames), "
                           f"got {tuple(m.shape) if torch.is_tensor(m) else type(m).__name__}")
    return maps


def attention_source(pipeline: nn.Module) -> str:
    """"pooling weights" when the classifier pools with attention, else "activation map"."""
    pool = getattr(getattr(pipeline, "backbone", None), "pool", None)
    return "pooling weights" if isinstance(pool, AttentionPool) else "activation map"


def time_attention(pipeline: nn.Module, body_out: torch.Tensor) -> torch.Tensor:
    """(B, T) attention over the body's frames: the attention pooling's own weights (the
    pool's input is the body's output), else ``activation_attention`` of that map."""
    if attention_source(pipeline) == "pooling weights":
        return pipeline.backbone.pool.energy(body_out).float().softmax(dim=-1)
    return activation_attention(body_out)


# ------------------------------------------------------------------------------ the objective
class Distillation(nn.Module):
    """Training objective ``(net, wave, target) -> (loss, logits)`` distilling ``teacher``.

    Args:
        teacher: the teacher pipeline (``load_teacher``); kept outside this module's tree, so
            its frozen weights are neither in ``parameters()`` (the optimiser) nor saved; it
            follows the batch to its device.
        student: a pipeline of the student's structure (the module names the loop will train),
            used once to measure the feature maps' widths for the projection.
        temperature, alpha: the soft-target temperature T and its weight (1 - alpha weighs
            the hard labels' cross-entropy).
        label_smoothing: of the hard-label cross-entropy (the config's train.label_smoothing).
        feature_weight: weight of the FitNets MSE (0 = off).
        attention_weight: weight of the attention KL over time (0 = off).
        student_layer, teacher_layer: module names of the feature maps for the MSE.
        clip_samples: clip length used to probe the feature maps.
        seed: seeds the projection's initial weights.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *, temperature: float = 4.0,
                 alpha: float = 0.5, label_smoothing: float = 0.0, feature_weight: float = 0.0,
                 attention_weight: float = 0.0, student_layer: str = BODY,
                 teacher_layer: str = BODY, clip_samples: int = 16000, seed: int = 0):
        super().__init__()
        check_weights(temperature, alpha, feature_weight, attention_weight)
        self.__dict__["teacher"] = teacher
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.label_smoothing = float(label_smoothing)
        self.feature_weight, self.attention_weight = float(feature_weight), float(attention_weight)
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.student_names, self.teacher_names = set(), set()
        if self.feature_weight > 0:
            self.student_names.add(student_layer)
            self.teacher_names.add(teacher_layer)
        if self.attention_weight > 0:
            self.student_names.add(BODY)
            self.teacher_names.add(BODY)
        for name in sorted(self.student_names):
            check_layer(student, name, "student")
        for name in sorted(self.teacher_names):
            check_layer(teacher, name, "teacher")
        self.hint = None
        if self.feature_weight > 0:
            s = _probe_maps(student, [student_layer], clip_samples)[student_layer]
            t = _probe_maps(teacher, [teacher_layer], clip_samples)[teacher_layer]
            with torch.random.fork_rng(devices=[]):  # the same projection for the same seed
                torch.manual_seed(seed)
                self.hint = FeatureHint(s.shape[1], t.shape[1])
            self._widths = (int(s.shape[1]), int(t.shape[1]))
        self._attention = (attention_source(student), attention_source(teacher))

    @property
    def uses_teacher(self) -> bool:
        return self.alpha > 0 or self.feature_weight > 0 or self.attention_weight > 0

    def describe(self) -> dict:
        """The settings and what each term compares (what a run's distill.json records)."""
        d = {"temperature": self.temperature, "alpha": self.alpha,
             "label_smoothing": self.label_smoothing, "feature_weight": self.feature_weight,
             "attention_weight": self.attention_weight,
             "logits": "alpha * T^2 * KL(teacher || student) at temperature T "
                       "+ (1 - alpha) * cross-entropy"}
        if self.hint is not None:
            s, t = self._widths
            d["features"] = {"student_layer": self.student_layer,
                             "teacher_layer": self.teacher_layer, "divergence": "MSE",
                             "projection": f"1x1 conv {s}->{t}" if s != t else "none"}
        if self.attention_weight > 0:
            d["attention"] = {"student": self._attention[0], "teacher": self._attention[1],
                              "divergence": "KL(teacher || student)", "layer": BODY}
        return d

    def forward(self, net, wave, target):
        student = getattr(net, "module", net)  # DistributedDataParallel wraps the pipeline
        with capture(student, self.student_names) as s_maps:
            logits = net(wave)
        hard = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
        if not self.uses_teacher:
            return hard, logits
        teacher = self.teacher
        if next(teacher.parameters()).device != wave.device:
            teacher.to(wave.device)
        with torch.no_grad(), capture(teacher, self.teacher_names) as t_maps:
            t_logits = teacher(wave)
            t_att = time_attention(teacher, t_maps[BODY]) if self.attention_weight > 0 else None
        loss = (1 - self.alpha) * hard
        if self.alpha > 0:
            loss = loss + self.alpha * soft_target_loss(logits, t_logits, self.temperature)
        if self.hint is not None:
            loss = loss + self.feature_weight * self.hint(s_maps[self.student_layer],
                                                          t_maps[self.teacher_layer])
        if t_att is not None:
            loss = loss + self.attention_weight * attention_kl(
                t_att, time_attention(student, s_maps[BODY]))
        return loss, logits


def check_weights(temperature: float, alpha: float, feature_weight: float,
                  attention_weight: float) -> None:
    if not temperature > 0:
        raise KwsError(f"--temperature: must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise KwsError(f"--alpha: must be in [0, 1], got {alpha}")
    for flag, w in (("--feature-weight", feature_weight), ("--attention-weight", attention_weight)):
        if not w >= 0:
            raise KwsError(f"{flag}: must be >= 0, got {w}")


# ------------------------------------------------------------------------------ the command
def load_teacher(run: str | Path, which: str = "best"):
    """(pipeline in eval mode with frozen weights, config, labels) of a teacher run."""
    from kwskit.models.io import load_model

    try:
        model, cfg, labels = load_model(run, which)
    except KwsError as exc:
        raise KwsError(f"--teacher: {exc}") from None
    model.eval().requires_grad_(False)
    return model, cfg, labels


def check_teacher_fits(teacher_cfg, teacher_labels: list[str], cfg, run) -> None:
    """KwsError unless the teacher scores the student's labels, in order, at its sample rate."""
    from kwskit.data.speech_commands import resolve_labels

    labels = resolve_labels(cfg.data.labels)
    if list(teacher_labels) != labels:
        raise KwsError(f"--teacher {run}: its labels [{', '.join(teacher_labels)}] are not the "
                       f"student's data.labels [{', '.join(labels)}] (same words, same order); "
                       f"set the student's with --set data.labels=[...]")
    if teacher_cfg.data.sample_rate != cfg.data.sample_rate:
        raise KwsError(f"--teacher {run}: trained at {teacher_cfg.data.sample_rate} Hz, the "
                       f"student's data.sample_rate is {cfg.data.sample_rate} Hz")


def distill(cfg, out: str | Path, teacher_run: str | Path, *, data: str | None = None,
            temperature: float = 4.0, alpha: float = 0.5, feature_weight: float = 0.0,
            attention_weight: float = 0.0, student_layer: str = BODY, teacher_layer: str = BODY,
            quiet: bool = True, track: bool = True, tracking_uri: str | None = None) -> dict:
    """Train the student ``cfg`` into ``out`` with ``teacher_run`` distilled into it.

    ``out`` becomes an ordinary run of the student (its config, labels, checkpoints,
    metrics.json) plus ``distill.json``: the teacher, its validation accuracy and
    ``Distillation.describe()``. Data: ``data``, else the student's data.root, else the
    teacher's. Returns fit()'s result with the record under "distill".
    """
    from kwskit.fsutil import write_json
    from kwskit.models.io import arch_of, build_from_arch, resolve_checkpoint
    from kwskit.data.speech_commands import resolve_labels
    from kwskit.train.loop import fit

    check_weights(temperature, alpha, feature_weight, attention_weight)
    teacher, t_cfg, t_labels = load_teacher(teacher_run)
    check_teacher_fits(t_cfg, t_labels, cfg, teacher_run)
    probe = build_from_arch(arch_of(cfg, len(resolve_labels(cfg.data.labels))))
    objective = Distillation(teacher, probe, temperature=temperature, alpha=alpha,
                             label_smoothing=cfg.train.label_smoothing,
                             feature_weight=feature_weight, attention_weight=attention_weight,
                             student_layer=student_layer, teacher_layer=teacher_layer,
                             clip_samples=cfg.data.clip_samples, seed=cfg.train.seed)
    result = fit(cfg, out, data=data or cfg.data.root or t_cfg.data.root, objective=objective,
                 quiet=quiet, track=track, tracking_uri=tracking_uri)
    checkpoint = resolve_checkpoint(teacher_run)
    record = {"teacher": str(Path(teacher_run).resolve()), "teacher_checkpoint": checkpoint.name,
              "teacher_model": t_cfg.model.name, "teacher_val_acc": _best_val_acc(teacher_run),
              **objective.describe(),
              "teacher_input": "the student's batch after waveform augmentation, without the "
                               "student's SpecAugment"}
    write_json(Path(out) / "distill.json", record)
    return {**result, "distill": record}


def _best_val_acc(run) -> float | None:
    import json

    metrics = Path(run) / "metrics.json"
    if not metrics.is_file():
        return None
    try:
        return (json.loads(metrics.read_text()).get("best") or {}).get("val_acc")
    except (ValueError, AttributeError):
        return None
