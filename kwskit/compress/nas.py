"""Architecture search under a cost budget: ProxylessNAS for keyword spotting.

Peter, Roth, Pernkopf 2020 (arXiv:2012.10138) search KWS models with ProxylessNAS (Cai, Zhu,
Han, ICLR 2019, arXiv:1812.00332). The space (kwskit.models.mbconv) is a stack of layers that
each choose an MBConv op or ``skip``. The supernet holds every candidate of every layer and
one architecture parameter per candidate; training alternates

- weight steps: each layer samples ONE candidate from softmax(alpha) (path binarisation), so a
  step costs about one model's forward and backward, and only that path's weights learn;
- architecture steps, on clips held out of the training split: each layer samples TWO
  candidates, the forward pass uses one of them (a binary gate), and the gates' gradients
  reach alpha through the softmax of the pair (ProxylessNAS' two-path estimate); the pair's
  alphas are then shifted so the other candidates' probabilities stay what they were.

The architecture loss is 001's (ProxylessNAS' ``mul#log``, ``loss="mul-log"``)::

    loss = CE * alpha * (log E[cost] / log target) ** beta,
    E[cost] = fixed cost + sum over layers and candidates of p(candidate) * cost(candidate)

or, by default, the same with the cost factor held at 1 below the target (``loss="target"``)::

    loss = CE * alpha * max(1, log E[cost] / log target) ** beta

In 001's form the target is only a constant factor, 1 / (log target) ** beta, of the whole loss:
its gradient's direction does not depend on the target, and Adam (which 001 and ProxylessNAS
use for alpha) divides the scale out, so two searches that differ only in the target take the
same steps (measured: 1.5 M and 2.5 M MACs gave identical histories to four digits). There
beta alone trades accuracy for cost, which is how 001 moved along the front. The default form
makes the target a soft budget: above it the cost pulls as in 001, below it only accuracy
counts.

with each candidate's cost from kwskit's profiler (MACs of that op on its input shape for one
1-s clip, as ``kwskit info`` counts them) or, optionally, its measured CPU latency in
microseconds. The found model is the most probable candidate of every layer; ``found.yaml``
trains it from scratch with ``kwskit train --config``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from kwskit.config import ExperimentConfig, save_config
from kwskit.errors import KwsError
from kwskit.fsutil import atomic_path, check_new_out, write_json
from kwskit.models.mbconv import (EXPANSIONS, KERNELS, SKIP, STAGES, STEM_CHANNELS, Slot,
                                  build_head, build_stem, candidate_ops, layer_slots,
                                  mbconv_body, parse_op)

COSTS = ("macs", "latency")
LOSSES = ("target", "mul-log")
# The supernet's and the found models' training recipe when no --config is given (the same
# values as configs/mbconv_net.yaml; a test keeps them equal).
RECIPE = {
    "model": {"name": "mbconv_net", "args": {"dropout": 0.1}},
    "frontend": {"type": "mfcc", "n_mfcc": 10, "n_mels": 40, "n_fft": 1024, "win_length": 640,
                 "hop_length": 320, "f_min": 20.0, "f_max": 4000.0},
    "augment": {"shift_ms": 100, "noise_prob": 0.8, "noise_mode": "volume"},
    "data": {"labels": "gsc12"},
    "optim": {"name": "adam", "lr": 0.002, "weight_decay": 0.0},
    "schedule": {"name": "cosine", "warmup_epochs": 1, "min_lr": 0.0},
    "train": {"epochs": 100, "batch_size": 100},
}


def default_config(overrides: list[str] | None = None) -> ExperimentConfig:
    """RECIPE as a config, with ``--set`` style overrides."""
    from kwskit.config import apply_overrides, config_from_dict

    cfg = config_from_dict(RECIPE)
    return config_from_dict(apply_overrides(cfg.to_dict(), overrides)) if overrides else cfg


@dataclasses.dataclass
class SearchSettings:
    """What a search does besides training weights (the config's optimiser and data do that)."""

    target: float  # MACs per clip, or microseconds per clip with cost="latency"
    cost: str = "macs"
    loss: str = "target"  # "target": no cost pull below the target; "mul-log": 001's
    alpha: float = 1.0  # 001's grad_reg_loss_alpha
    beta: float = 8.0  # exponent of the cost term; bigger pulls harder towards the target
    arch_lr: float = 0.02  # Adam, beta1 0 as in ProxylessNAS; 001 used 4e-3 over ~100x more steps
    warmup_epochs: int = 3  # weight-only epochs before alpha starts to move
    epochs: int = 6  # search epochs after warm-up
    holdout: float = 0.1  # share of the training clips kept for architecture steps
    arch_every: int = 1  # one architecture step every this many weight steps
    width_mult: float = 1.0
    kernels: tuple = KERNELS
    expansions: tuple = EXPANSIONS
    stages: tuple = STAGES
    stem_channels: int = STEM_CHANNELS

    def check(self) -> None:
        def bad(name, why):
            raise KwsError(f"nas: {name} {why}, got {getattr(self, name)!r}")

        if self.cost not in COSTS:
            bad("cost", f"must be one of {', '.join(COSTS)}")
        if self.loss not in LOSSES:
            bad("loss", f"must be one of {', '.join(LOSSES)}")
        for name in ("target", "alpha", "arch_lr", "width_mult"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v:
                bad(name, "must be a positive number")
        if not isinstance(self.beta, (int, float)) or self.beta < 0:
            bad("beta", "must be a number >= 0")
        for name in ("warmup_epochs", "epochs", "arch_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name != "warmup_epochs" else 0):
                bad(name, "must be a positive integer" if name != "warmup_epochs" else "must be an integer >= 0")
        if not 0 < self.holdout < 0.5:
            bad("holdout", "must be in (0, 0.5)")
        for name in ("kernels", "expansions"):
            v = getattr(self, name)
            if not v or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in v):
                bad(name, "must be a non-empty list of positive integers")
        if any(k % 2 == 0 for k in self.kernels):
            bad("kernels", "must be odd")


def settings_from_dict(d: dict) -> SearchSettings:
    """SearchSettings back from their saved JSON form (lists become tuples again)."""
    d = dict(d)
    d["kernels"], d["expansions"] = tuple(d["kernels"]), tuple(d["expansions"])
    d["stages"] = tuple(tuple(x) for x in d["stages"])
    return SearchSettings(**d)


# ------------------------------------------------------------------------------ the supernet

class _SharedDepthwise(nn.Module):
    """Depthwise K x K (any odd K up to the largest; the smaller kernels are its centre), BN,
    ReLU, then a 1x1 projection and BN, on the first ``n`` of ``channels`` input channels."""

    def __init__(self, channels: int, c_out: int, kernel: int, stride: int, padding: str):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.dw = nn.Parameter(torch.empty(channels, 1, kernel, kernel))
        self.dw_bn = nn.BatchNorm2d(channels)
        self.project = nn.Parameter(torch.empty(c_out, channels, 1, 1))
        self.project_bn = nn.BatchNorm2d(c_out)
        for w in (self.dw, self.project):  # nn.Conv2d's default initialisation
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def forward(self, h, kernel: int):
        from kwskit.layers.conv import split_padding

        n = h.shape[1]
        c, r = self.dw.shape[-1] // 2, kernel // 2
        w = self.dw[:n, :, c - r:c + r + 1, c - r:c + r + 1]
        left, right = split_padding(kernel - 1, self.padding)
        h = F.pad(h, (left, right, r, r))
        h = F.relu(_sliced_bn(self.dw_bn, F.conv2d(h, w, stride=self.stride, groups=n), n))
        return _sliced_bn(self.project_bn, F.conv2d(h, self.project[:, :n]), self.project.shape[0])


def _sliced_bn(bn: nn.BatchNorm2d, x, n: int):
    """BatchNorm on batch statistics with the first ``n`` channels of ``bn``'s parameters."""
    return F.batch_norm(x, bn.running_mean[:n], bn.running_var[:n], bn.weight[:n], bn.bias[:n],
                        True, bn.momentum, bn.eps)


class SharedMBConv(nn.Module):
    """Every MBConv candidate of one layer in one set of weights (weight entanglement, as in
    Single-Path NAS, Stamoulis et al. 2019, arXiv:1904.02877, and Once-for-All): a K x K
    depthwise kernel is the centre of the largest one, and expansion E uses the first
    E x c_in channels of the largest expansion. Whole clips only, BatchNorm on batch
    statistics (the search never uses running statistics); the derived model is built from
    kwskit.models.mbconv and trained from scratch."""

    def __init__(self, slot: Slot, kernels, expansions, padding: str):
        super().__init__()
        self.slot = slot
        hidden = max(expansions) * slot.c_in
        self.expand = nn.Parameter(torch.empty(hidden, slot.c_in, 1, 1))
        nn.init.kaiming_uniform_(self.expand, a=math.sqrt(5))  # nn.Conv2d's default
        self.expand_bn = nn.BatchNorm2d(hidden)
        self.body = _SharedDepthwise(hidden, slot.c_out, max(kernels), slot.stride, padding)

    def forward(self, x, kernel: int, expansion: int):
        n = expansion * self.slot.c_in
        h = F.relu(_sliced_bn(self.expand_bn, F.conv2d(x, self.expand[:n]), n))
        return self.body(h, kernel)


class MixedLayer(nn.Module):
    """One searchable layer: its candidate ops (weights shared, SharedMBConv), their
    architecture parameters, and the sampled path (one op in weight steps; two, one of them
    gated on, in architecture steps)."""

    def __init__(self, slot: Slot, ops: list[str], kernels, expansions, padding: str):
        super().__init__()
        self.slot, self.names = slot, list(ops)
        self.parsed = [parse_op(op, "nas") for op in ops]
        self.shared = SharedMBConv(slot, kernels, expansions, padding)
        self.alpha = nn.Parameter(torch.zeros(len(ops)))
        self.path: tuple[int, ...] = (0,)
        self.gate_on = 0

    def probs(self) -> torch.Tensor:
        return F.softmax(self.alpha, dim=0)

    def sample_one(self, gen: torch.Generator) -> None:
        self.path = (int(torch.multinomial(self.probs().detach(), 1, generator=gen)),)

    def sample_two(self, gen: torch.Generator) -> None:
        p = self.probs().detach()
        if len(p) == 1:
            self.path, self.gate_on = (0,), 0
            return
        pair = torch.multinomial(p, 2, replacement=False, generator=gen)
        self.path = tuple(int(i) for i in pair)
        self.gate_on = int(torch.multinomial(p[pair] / p[pair].sum(), 1, generator=gen))

    def fix(self, index: int) -> None:
        self.path = (index,)

    def candidate(self, i: int, x):
        return torch.zeros_like(x) if self.parsed[i] is None else self.shared(x, *self.parsed[i])

    def forward(self, x):
        if len(self.path) == 1:
            return self.candidate(self.path[0], x)
        # binary gates in the forward pass, softmax-of-the-pair gradients in the backward one
        soft = F.softmax(self.alpha[list(self.path)], dim=0)
        hard = F.one_hot(torch.tensor(self.gate_on), len(self.path)).to(soft)
        gates = hard - soft.detach() + soft
        return sum(g * self.candidate(i, x) for g, i in zip(gates, self.path))

    def rescale(self, before: torch.Tensor) -> None:
        """Shift the sampled pair's alphas so their total probability mass is what it was
        before the step: the other candidates' probabilities stay unchanged (ProxylessNAS)."""
        if len(self.path) < 2:
            return
        idx = list(self.path)
        with torch.no_grad():
            offset = torch.logsumexp(self.alpha[idx], 0) - torch.logsumexp(before[idx], 0)
            self.alpha[idx] -= offset


class SuperNet(nn.Module):
    """Every model of the MBConv space at once, on (batch, 1, in_features, frames) features.

    With a path fixed in every layer it computes what the derived ``mbconv_net`` computes:
    stem, layers (``x + op(x)`` where the layer keeps the shape, so ``skip`` is the identity),
    mean over frequency, average over time, dropout, linear.
    """

    def __init__(self, num_classes: int, in_features: int, s: SearchSettings,
                 dropout: float = 0.0, causal: bool = False):
        super().__init__()
        pad = "causal" if causal else "same"
        self.slots = layer_slots(s.stages, s.stem_channels, s.width_mult, "nas")
        ops = candidate_ops(s.kernels, s.expansions)
        self.in_features = in_features
        self.stem = build_stem(self.slots[0].c_in, pad)
        self.padding = pad
        self.layers = nn.ModuleList(MixedLayer(sl, ops + ([SKIP] if sl.can_skip else []),
                                               s.kernels, s.expansions, pad)
                                    for sl in self.slots)
        self.head = build_head(self.slots[-1].c_out, num_classes, dropout)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [m.alpha for m in self.layers]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x):
        h = self.stem(x)
        for m in self.layers:
            y = m(h)
            h = h + y if m.slot.can_skip else y
        return self.head(h.mean(dim=2).mean(dim=-1))

    def chosen(self) -> list[str]:
        """The most probable op of every layer: the found architecture."""
        return [m.names[int(m.alpha.argmax())] for m in self.layers]

    def fix(self, ops: list[str]) -> None:
        for m, op in zip(self.layers, ops):
            m.fix(m.names.index(op))


# ------------------------------------------------------------------------------ cost model

def layer_inputs(net: SuperNet, frames: int) -> list[tuple]:
    """Input shape (1, C, F, T) of every searchable layer for a clip of ``frames`` frames."""
    shapes = []
    with torch.no_grad():
        h = net.stem(torch.zeros(1, 1, net.in_features, frames))
        for m in net.layers:
            shapes.append(tuple(h.shape))
            first = next(i for i, p in enumerate(m.parsed) if p is not None)
            h = mbconv_body(*m.parsed[first], m.slot, net.padding).eval()(h)
    return shapes


def cost_table(net: SuperNet, frames: int, kind: str = "macs") -> dict:
    """Cost of every candidate of every layer and of the fixed parts (stem, classifier), for
    one clip of ``frames`` feature frames, measured on the modules the derived model is built
    from: MACs (kwskit.eval.profile.count_macs, so a derived model's total equals ``kwskit
    info``'s) or median CPU latency in microseconds, one thread."""
    from kwskit.eval.profile import count_macs, measure_latency

    def cost(module, shape):
        x = torch.zeros(shape)
        if kind == "macs":
            return float(count_macs(module, x))
        return 1000.0 * measure_latency(module, x, threads=1, warmup=3, repeats=20)["median_ms"]

    was = net.training
    net.eval()
    shapes = layer_inputs(net, frames)
    table = {"kind": kind, "frames": frames,
             "fixed": cost(net.stem, (1, 1, net.in_features, frames))
             + cost(net.head, (1, net.slots[-1].c_out)),
             "layers": [{name: (0.0 if p is None else cost(mbconv_body(*p, m.slot, net.padding), shape))
                         for name, p in zip(m.names, m.parsed)}
                        for m, shape in zip(net.layers, shapes)]}
    net.train(was)
    return table


def expected_cost(net: SuperNet, table: dict) -> torch.Tensor:
    """E[cost] under the current softmax(alpha): differentiable in alpha."""
    total = torch.tensor(table["fixed"])
    for m, costs in zip(net.layers, table["layers"]):
        total = total + (m.probs() * torch.tensor([costs[n] for n in m.names])).sum()
    return total


def path_cost(ops: list[str], table: dict) -> float:
    return table["fixed"] + sum(costs[op] for op, costs in zip(ops, table["layers"]))


def cost_range(table: dict) -> tuple[float, float]:
    lo = table["fixed"] + sum(min(c.values()) for c in table["layers"])
    hi = table["fixed"] + sum(max(c.values()) for c in table["layers"])
    return lo, hi


def arch_loss(ce: torch.Tensor, expected: torch.Tensor, target: float, alpha: float,
              beta: float, kind: str = "target") -> torch.Tensor:
    """CE * alpha * (log E / log target)^beta (001's, ProxylessNAS mul#log); ``kind="target"``
    holds the ratio at 1 below the target (module doc)."""
    ratio = torch.log(expected) / math.log(target)
    if kind == "target":
        ratio = torch.clamp(ratio, min=1.0)
    return ce * alpha * ratio ** beta


# ------------------------------------------------------------------------------ the search

def _human(v: float, kind: str) -> str:
    return f"{v / 1e6:.2f} M MACs" if kind == "macs" else f"{v:.0f} us"


def _split_indices(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    k = max(1, round(n * holdout))
    return sorted(perm[k:]), sorted(perm[:k])


def found_config(cfg: ExperimentConfig, ops: list[str], s: SearchSettings) -> ExperimentConfig:
    """The experiment config that trains the found model from scratch."""
    args = {**cfg.model.args, "ops": list(ops), "stages": [list(x) for x in s.stages],
            "stem_channels": s.stem_channels, "width_mult": s.width_mult}
    args.pop("in_features", None)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name="mbconv_net", args=args))


def search(cfg: ExperimentConfig, out: str | Path, settings: SearchSettings, *,
           data: str | None = None, resume: bool = False, quiet: bool = False) -> dict:
    """Search the MBConv space for ``settings.target`` into run directory ``out``.

    Writes ``search.json`` (settings, cost table, per-epoch history of alpha, expected and
    chosen cost, the found ops), ``found.yaml`` (a config that trains the found model),
    ``search.png`` and ``checkpoints/search.pt`` (resumable after a kill, ``resume=True``).
    """
    from kwskit.data.loader import KwsDataset
    from kwskit.features.frontend import build_frontend
    from kwskit.models.pipeline import KwsPipeline
    from kwskit.threads import choose_threads
    from kwskit.train.data import TrainData
    from kwskit.train.loop import lr_at, make_optimizer

    out = Path(out)
    ck_path = out / "checkpoints" / "search.pt"
    state = None
    if resume:
        if not ck_path.exists():
            raise KwsError(f"{out}: nothing to resume (no checkpoints/search.pt)")
        state = torch.load(ck_path, map_location="cpu", weights_only=False)
        settings = settings_from_dict(state["settings"])
        from kwskit.config import config_from_dict

        cfg = config_from_dict(state["config"])
    else:
        check_new_out(out)
    settings.check()
    s = settings
    total_epochs = s.warmup_epochs + s.epochs
    # the supernet's lr schedule spans the search; found.yaml keeps the recipe's epochs
    sched = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=total_epochs))
    threads, why = choose_threads(cfg.train.threads)
    torch.set_num_threads(threads)
    if not quiet:
        print(f"threads: {threads} ({why})", file=sys.stderr)

    from kwskit.data.speech_commands import resolve_labels

    labels = resolve_labels(cfg.data.labels)
    frontend = build_frontend(cfg.frontend)
    if not hasattr(frontend, "n_features"):
        raise KwsError("config: frontend: the MBConv space takes features (frontend.type mfcc or logmel)")
    torch.manual_seed(cfg.train.seed)
    dropout = float(cfg.model.args.get("dropout", 0.0))
    supernet = SuperNet(len(labels), int(frontend.n_features), s, dropout,
                        bool(cfg.model.args.get("causal", False)))
    net = KwsPipeline(frontend, supernet, input_kind="2d")
    frames = int(frontend(torch.zeros(1, cfg.data.clip_samples)).shape[-1])
    table = state["table"] if state is not None else cost_table(supernet, frames, s.cost)
    lo, hi = cost_range(table)
    if not lo < s.target < hi:
        raise KwsError(f"nas: target {_human(s.target, s.cost)} is outside this space's range "
                       f"({_human(lo, s.cost)} cheapest, {_human(hi, s.cost)} dearest); pick a "
                       f"target inside it, or change --width-mult / --n-mfcc")
    td = TrainData(cfg, data, quiet=quiet)
    cfg.data.root = td.root

    w_idx, a_idx = _split_indices(len(td.train_set), s.holdout, cfg.train.seed)
    weight_set = torch.utils.data.Subset(td.train_set, w_idx)
    arch_set = torch.utils.data.Subset(KwsDataset(td.train, augment=None), a_idx)
    w_opt = make_optimizer(cfg, supernet)  # alphas are excluded below
    arch_ids = {id(p) for p in supernet.arch_parameters()}
    for g in w_opt.param_groups:
        g["params"] = [p for p in g["params"] if id(p) not in arch_ids]
    a_opt = torch.optim.Adam(supernet.arch_parameters(), lr=s.arch_lr, betas=(0.0, 0.999), eps=1e-8)
    history, start_epoch = [], 0
    if state is not None:
        net.load_state_dict(state["model"])
        w_opt.load_state_dict(state["w_opt"])
        a_opt.load_state_dict(state["a_opt"])
        history, start_epoch = state["history"], state["epoch"]
    else:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"nas: {len(supernet.layers)} layers x {len(candidate_ops(s.kernels, s.expansions))} "
              f"ops (+ skip where allowed); cost {_human(lo, s.cost)} .. {_human(hi, s.cost)}, "
              f"target {_human(s.target, s.cost)}; {len(w_idx)} clips for weights, "
              f"{len(a_idx)} for the architecture", file=sys.stderr)

    bs = cfg.train.batch_size
    for epoch in range(start_epoch, total_epochs):
        td.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
        torch.manual_seed(cfg.train.seed * 1_000_003 + epoch + 1)
        w_loader = torch.utils.data.DataLoader(
            weight_set, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(
                cfg.train.seed * 7919 + epoch), drop_last=True)
        a_batches = _cycle(arch_set, min(bs, len(arch_set)), cfg.train.seed * 104_729 + epoch)
        searching = epoch >= s.warmup_epochs
        net.train()
        t0, seen, loss_sum, correct, arch_steps = time.time(), 0, 0.0, 0, 0
        phase = "search" if searching else "warm-up"
        bar = tqdm(w_loader, desc=f"nas {phase} {epoch + 1}/{total_epochs}", unit="batch",
                   disable=quiet or None, leave=False, dynamic_ncols=True)
        steps = len(w_loader)
        for step, (wave, target) in enumerate(bar):
            for g in w_opt.param_groups:
                g["lr"] = lr_at(sched, epoch + step / steps)
            for m in supernet.layers:
                m.sample_one(gen)
            logits = net(wave)
            loss = F.cross_entropy(logits, target, label_smoothing=cfg.train.label_smoothing)
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            w_opt.step()
            seen += len(target)
            loss_sum += loss.item() * len(target)
            correct += (logits.argmax(1) == target).sum().item()
            if searching and step % s.arch_every == 0:
                a_wave, a_target = next(a_batches)
                for m in supernet.layers:
                    m.sample_two(gen)
                before = [m.alpha.detach().clone() for m in supernet.layers]
                ce = F.cross_entropy(net(a_wave), a_target)
                a_loss = arch_loss(ce, expected_cost(supernet, table), s.target, s.alpha, s.beta,
                                   s.loss)
                a_opt.zero_grad(set_to_none=True)
                w_opt.zero_grad(set_to_none=True)
                a_loss.backward()
                a_opt.step()
                for m, b in zip(supernet.layers, before):
                    m.rescale(b)
                arch_steps += 1
            with torch.no_grad():
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                cost=_human(float(expected_cost(supernet, table)), s.cost))
        ops = supernet.chosen()
        row = {"epoch": epoch + 1, "phase": phase, "train_loss": loss_sum / seen,
               "train_acc": correct / seen, "arch_steps": arch_steps,
               "expected_cost": float(expected_cost(supernet, table).detach()),
               "chosen_cost": path_cost(ops, table), "chosen": ops,
               "holdout_acc": _path_accuracy(net, supernet, ops, arch_set),
               "probs": [[round(float(p), 4) for p in m.probs().detach()] for m in supernet.layers],
               "seconds": round(time.time() - t0, 1)}
        history.append(row)
        with atomic_path(ck_path) as tmp:
            torch.save({"model": net.state_dict(), "w_opt": w_opt.state_dict(),
                        "a_opt": a_opt.state_dict(), "epoch": epoch + 1, "history": history,
                        "settings": dataclasses.asdict(s), "config": cfg.to_dict(),
                        "table": table, "labels": labels}, tmp)
        _write_results(out, cfg, s, table, history, supernet, labels)
        if not quiet:
            tqdm.write(f"nas epoch {epoch + 1:2d} ({phase})  loss {row['train_loss']:.4f}  "
                       f"acc {row['train_acc']:.4f}  E[cost] {_human(row['expected_cost'], s.cost)}  "
                       f"chosen {_human(row['chosen_cost'], s.cost)}  holdout acc (chosen path) "
                       f"{row['holdout_acc']:.4f}  {row['seconds']:.0f}s")
    _write_results(out, cfg, s, table, history, supernet, labels)
    return json.loads((out / "search.json").read_text())


def _cycle(dataset, batch_size: int, seed: int):
    """Endless shuffled full batches of ``dataset`` (reshuffled on every pass, seeded)."""
    for rep in range(1_000_000):
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                             generator=torch.Generator().manual_seed(seed + rep))
        yield from loader


@torch.no_grad()
def _path_accuracy(net, supernet: SuperNet, ops: list[str], dataset) -> float:
    """Accuracy of the supernet's ``ops`` path (its shared weights, no retraining) on the
    held-out clips: a quick sign of how the chosen architecture does during the search.
    BatchNorm uses each batch's statistics: the running ones mix every path's."""
    was = net.training
    net.train()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    saved = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    supernet.fix(ops)
    correct = n = 0
    for wave, target in torch.utils.data.DataLoader(dataset, batch_size=256):
        correct += (net(wave).argmax(1) == target).sum().item()
        n += len(target)
    net.load_state_dict(saved, strict=False)  # batch statistics must not leak into training
    net.train(was)
    return correct / max(n, 1)


def _write_results(out: Path, cfg, s: SearchSettings, table: dict, history: list, supernet: SuperNet,
                   labels: list[str]) -> None:
    from kwskit.eval.profile import count_params
    from kwskit.models.io import arch_of, build_from_arch

    ops = supernet.chosen()
    fcfg = found_config(cfg, ops, s)
    model = build_from_arch(arch_of(fcfg, len(labels)))
    result = {"settings": dataclasses.asdict(s), "labels": labels, "frontend": cfg.frontend,
              "found": {"ops": ops, "cost": path_cost(ops, table), "params": count_params(model.backbone),
                        "lookahead_frames": model.backbone.lookahead_frames},
              "layers": [{"c_in": m.slot.c_in, "c_out": m.slot.c_out, "stride": m.slot.stride,
                          "ops": m.names} for m in supernet.layers],
              "table": table, "history": history,
              "search_seconds": round(sum(r["seconds"] for r in history), 1)}
    write_json(out / "search.json", result)
    save_config(fcfg, out / "found.yaml")
    try:
        plot_search(result, out / "search.png")
    except ImportError:  # matplotlib is optional (train extra); the JSON has everything
        pass


def plot_search(result: dict, path: Path) -> None:
    """Expected and chosen cost per epoch against the target, and the probability of each
    layer's chosen op over the search (one line per layer, labelled with the final op)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, s = result["history"], result["settings"]
    kind = s["cost"]
    scale, unit = (1e-6, "M MACs") if kind == "macs" else (1.0, "us")
    ep = [r["epoch"] for r in h]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(ep, [r["expected_cost"] * scale for r in h], marker="o", label="expected (softmax)")
    a1.plot(ep, [r["chosen_cost"] * scale for r in h], marker="s", label="chosen (argmax)")
    a1.axhline(s["target"] * scale, color="k", ls="--", label="target")
    if s["warmup_epochs"]:
        a1.axvspan(0.5, s["warmup_epochs"] + 0.5, color="0.9", label="weight warm-up")
    a1.set_xlabel("epoch")
    a1.set_ylabel(f"cost per clip ({unit})")
    a1.set_title(f"cost (beta {s['beta']:g}, width {s['width_mult']:g})")
    a1.legend(fontsize=8)
    final = h[-1]["chosen"]
    for i, (layer, op) in enumerate(zip(result["layers"], final)):
        j = layer["ops"].index(op)
        a2.plot(ep, [r["probs"][i][j] for r in h], label=f"L{i} {op}")
    a2.set_xlabel("epoch")
    a2.set_ylabel("probability of the final op")
    a2.set_ylim(0, 1)
    a2.set_title("chosen op per layer")
    a2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
