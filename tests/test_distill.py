"""Knowledge distillation (kwskit.compress.distill): the three loss terms, the objective in
fit(), and `kwskit distill` end to end on the tiny synthetic data set."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kwskit.cli import main as cli
from kwskit.compress.distill import (Distillation, attention_kl, load_teacher,
                                     soft_target_loss, time_attention)
from kwskit.config import load_config
from kwskit.errors import KwsError
from kwskit.models.io import build_pipeline, load_model, read_checkpoint
from kwskit.train.loop import CrossEntropy, fit

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = "data.labels=[yes, no, up, down]"
TINY = [LABELS, "train.batch_size=16", "optim.name=adam", "optim.lr=0.003",
        "optim.weight_decay=0", "schedule.name=constant", "train.threads=1"]
TEACHER = ["model.name=dscnn_s", "augment.noise_prob=0.3", *TINY]
# a small CRNN student: attention pooling over time, 8 GRU units against DS-CNN's 64 channels
STUDENT = ["model.name=crnn", "model.args.channels=2", "model.args.hidden=8",
           "model.args.num_layers=1", *TINY]


def cfg_of(overrides, epochs=1):
    return load_config(None, [*overrides, f"train.epochs={epochs}"])


@pytest.fixture(scope="module")
def teacher_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    fit(cfg_of(TEACHER, 3), out, data=str(tiny_data), track=False)
    return out


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, 16000, generator=g), torch.arange(n) % 6


# ------------------------------------------------------------------------------ the terms
def test_soft_targets_vanish_when_the_student_copies_the_teacher():
    t = torch.randn(8, 6) * 3
    s = t.clone().requires_grad_(True)
    loss = soft_target_loss(s, t, temperature=4.0)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert s.grad.abs().max().item() < 1e-6  # a minimum: no gradient pushes it away
    # elsewhere: T^2 * KL(p_t || p_s) at T = 4, written out
    other = torch.randn(8, 6)
    p_t, p_s = F.softmax(t / 4, -1), F.softmax(other / 4, -1)
    manual = 16 * (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert manual.item() > 0
    assert torch.isclose(soft_target_loss(other, t, 4.0), manual, atol=1e-6)


def test_attention_kl_is_zero_for_the_same_attention_and_positive_otherwise():
    a = torch.softmax(torch.randn(4, 13), -1)
    b = torch.softmax(torch.randn(4, 13), -1)
    assert attention_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert attention_kl(a, b).item() > 1e-3
    # different frame counts: averaged onto the shorter grid (98 frames -> 14 = 7 each)
    fine = a[:, :, None].expand(4, 13, 7).reshape(4, 91) / 7
    assert attention_kl(fine, a).item() == pytest.approx(0.0, abs=1e-6)


def test_time_attention_is_the_crnn_pooling_weights_or_an_activation_map():
    student = build_pipeline(cfg_of(STUDENT), 6).eval()
    h = torch.randn(3, 8, 13)
    alpha = time_attention(student, h)
    # the weights the attention pooling itself uses: sum_t alpha_t h_t is its output
    assert torch.allclose(torch.einsum("bt,bct->bc", alpha, h), student.backbone.pool(h), atol=1e-6)
    teacher = build_pipeline(cfg_of(TEACHER), 6).eval()
    m = time_attention(teacher, torch.randn(3, 64, 25))
    assert m.shape == (3, 25) and torch.allclose(m.sum(-1), torch.ones(3)) and (m >= 0).all()


def test_alpha_zero_is_plain_cross_entropy_and_alpha_mixes(teacher_run):
    teacher, _, _ = load_teacher(teacher_run)
    cfg = cfg_of(STUDENT)
    net = build_pipeline(cfg, 6).eval()
    wave, target = _batch()
    ce, logits = CrossEntropy(0.1)(net, wave, target)
    off = Distillation(teacher, net, alpha=0.0, label_smoothing=0.1)
    loss, same = off(net, wave, target)
    assert torch.equal(loss, ce) and torch.equal(same, logits)
    mixed, _ = Distillation(teacher, net, alpha=0.3, temperature=2.0, label_smoothing=0.1)(
        net, wave, target)
    with torch.no_grad():
        soft = soft_target_loss(logits, teacher(wave), 2.0)
    assert torch.isclose(mixed, 0.7 * ce + 0.3 * soft, atol=1e-6)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_feature_projection_gets_gradients_and_fit_trains_it(teacher_run, tiny_data, tmp_path):
    teacher, _, _ = load_teacher(teacher_run)
    cfg = cfg_of(STUDENT)
    net = build_pipeline(cfg, 6)
    obj = Distillation(teacher, net, feature_weight=1.0, attention_weight=1.0)
    assert obj.describe()["features"]["projection"] == "1x1 conv 8->64"
    assert obj.describe()["attention"] == {"student": "pooling weights",
                                          "teacher": "activation map",
                                          "divergence": "KL(teacher || student)",
                                          "layer": "backbone.body"}
    # only the projection is the objective's: the teacher is neither trained nor saved
    assert [n for n, _ in obj.named_parameters()] == ["hint.proj.weight", "hint.proj.bias"]
    loss, _ = obj(net, *_batch())
    loss.backward()
    assert obj.hint.proj.weight.grad.abs().sum() > 0
    assert net.backbone.pool.proj.weight.grad.abs().sum() > 0  # through the attention KL too

    before = obj.hint.proj.weight.detach().clone()
    fit(cfg, tmp_path / "run", data=str(tiny_data), objective=obj, track=False)
    assert not torch.equal(obj.hint.proj.weight, before)
    groups = read_checkpoint(tmp_path / "run/checkpoints/last.pt")["optimizer"]["param_groups"]
    assert len(groups[-1]["params"]) == 2  # fit's extra group: the projection's weight and bias


def test_layer_names_are_checked(teacher_run):
    teacher, _, _ = load_teacher(teacher_run)
    net = build_pipeline(cfg_of(STUDENT), 6)
    with pytest.raises(KwsError, match=r"--student-layer: the student has no module "
                                       r"'backbone.bdy' \(did you mean backbone.body"):
        Distillation(teacher, net, feature_weight=1.0, student_layer="backbone.bdy")
    with pytest.raises(KwsError, match="--alpha: must be in"):
        Distillation(teacher, net, alpha=1.5)


# ------------------------------------------------------------------------------ the command
def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def test_distill_run_reloads_and_evaluates(teacher_run, tiny_data, tmp_path):
    out = tmp_path / "student"
    code = cli(["distill", "--teacher", str(teacher_run), "--data", str(tiny_data),
                "--out", str(out), "--no-mlflow", "--temperature", "3", "--alpha", "0.7",
                "--feature-weight", "0.5", "--attention-weight", "0.2",
                *_sets([*STUDENT, "train.epochs=2"])])
    assert code == 0
    record = json.loads((out / "distill.json").read_text())
    assert record["teacher"] == str(teacher_run.resolve())
    assert (record["temperature"], record["alpha"]) == (3.0, 0.7)
    assert (record["feature_weight"], record["attention_weight"]) == (0.5, 0.2)
    assert record["attention"]["student"] == "pooling weights"
    teacher_best = json.loads((teacher_run / "metrics.json").read_text())["best"]
    assert record["teacher_val_acc"] == teacher_best["val_acc"]
    cfg = load_config(str(out / "config.yaml"))  # the student's own config, loadable as it is
    assert cfg.model.name == "crnn" and cfg.model.args["hidden"] == 8
    model, _, labels = load_model(out)
    assert labels == ["yes", "no", "up", "down", "_silence_", "_unknown_"]
    assert sum(p.numel() for p in model.parameters()) < 2000
    assert cli(["eval", str(out), "--data", str(tiny_data), "--split", "validation"]) == 0


def test_label_mismatch_and_missing_teacher_are_one_error(teacher_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "student"
    other = [*STUDENT[:-len(TINY)], "data.labels=[no, yes, up, down]", *TINY[1:], "train.epochs=1"]
    assert cli(["distill", "--teacher", str(teacher_run), "--data", str(tiny_data),
                "--out", str(out), "--no-mlflow", *_sets(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "its labels [yes, no, up, down, _silence_, _unknown_] are not the student's " \
           "data.labels [no, yes, up, down" in err
    assert not out.exists()  # nothing written

    assert cli(["distill", "--teacher", str(tmp_path / "nope"), "--data", str(tiny_data),
                "--out", str(out), "--no-mlflow", *_sets([*STUDENT, "train.epochs=1"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"kwskit: error: --teacher: {tmp_path / 'nope'}: "
                   "no such run directory or checkpoint")
    assert not out.exists()
