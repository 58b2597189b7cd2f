"""Structured pruning (kwskit.compress.prune, kwskit.models.pruned): channels really go, the
right ones go, and the pruned run reloads, streams and exports as it is."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning", reason="kwskit prune needs torch-pruning")

from kwskit.cli import main as cli  # noqa: E402
from kwskit.compress.prune import (check_prunable, clip_features, importance_of,  # noqa: E402
                                   prune_channels, prune_run, prune_to_macs)
from kwskit.config import ExperimentConfig, ModelConfig  # noqa: E402
from kwskit.errors import KwsError  # noqa: E402
from kwskit.eval.profile import count_macs, count_params  # noqa: E402
from kwskit.layers import SubSpectralNorm  # noqa: E402
from kwskit.layers.recurrent import StreamGRU  # noqa: E402
from kwskit.models import create_model, model_info  # noqa: E402
from kwskit.models.io import (arch_of, build_from_arch, build_pipeline, load_model,  # noqa: E402
                              save_checkpoint)
from kwskit.models.pruned import record_shapes  # noqa: E402
from test_streaming import (assert_stream_equals_whole, make_signal, randomize,  # noqa: E402
                            recipe_pipeline, scale_head)

SR = 16000
TINY_LABELS = ["yes", "no", "up", "down", "_silence_", "_unknown_"]
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


def _pruned_copy(pipeline, ratio=0.5, importance="l1"):
    """(the pipeline with its backbone pruned in place, its arch with "pruned")."""
    name = pipeline.backbone.model_name
    arch = arch_of(ExperimentConfig(model=ModelConfig(name), frontend=model_info(name)["frontend"]),
                   pipeline.backbone.num_classes_out())
    fresh = build_from_arch(arch).backbone
    prune_channels(pipeline.backbone, ratio, importance_of(importance), name)
    return pipeline, {**arch, "pruned": record_shapes(pipeline.backbone, fresh)}


# ---------------------------------------------------------------------------- the right channels

def _kill_first_channels(model: nn.Module, ratio: float) -> None:
    """Make the first n - int(n * (1 - ratio)) channels of every layer output exactly zero:
    zero conv rows, zero BatchNorm / SubSpectralNorm scale and shift. Removing them must not
    change the output, and BN-scale importance ranks them last."""
    def dead(n):
        return n - int(n * (1 - ratio))

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                m.weight[:dead(m.out_channels)] = 0
            elif isinstance(m, SubSpectralNorm):
                k = dead(m.channels) * m.sub_bands
                m.bn.weight[:k], m.bn.bias[:k] = 0, 0
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight[:dead(m.num_features)], m.bias[:dead(m.num_features)] = 0, 0


@pytest.mark.parametrize("name", ["dscnn_s", "bcresnet1", "tcresnet8", "matchboxnet_3x1x64"])
def test_dead_channels_are_the_ones_removed_and_outputs_stay(name):
    # torch-pruning's index bookkeeping through our layers (residual sums, depthwise convs,
    # SubSpectralNorm's per-band features): dead channels go, the output does not move
    p = randomize(recipe_pipeline(name), seed=zlib.crc32(name.encode()))
    _kill_first_channels(p.backbone, 0.25)
    x = torch.from_numpy(make_signal(1.0, seed=2))[None]
    with torch.no_grad():
        want = p(x)
    before = count_params(p.backbone)
    prune_channels(p.backbone, 0.25, importance_of("bn"), name)
    assert count_params(p.backbone) < 0.8 * before
    with torch.no_grad():
        torch.testing.assert_close(p(x), want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------ shapes, reload, stream

@pytest.mark.parametrize("name", ["dscnn_s", "bcresnet1", "tcresnet8", "matchboxnet_3x1x64",
                                  "crnn", "sincconv_dsconv"])
def test_pruned_model_rebuilds_from_its_arch_and_streams_exactly(name):
    p = randomize(recipe_pipeline(name), seed=zlib.crc32(name.encode()))
    before = count_params(p.backbone)
    p, arch = _pruned_copy(p)
    assert count_params(p.backbone) < 0.9 * before
    assert json.loads(json.dumps(arch)) == arch and arch["pruned"]
    rebuilt = build_from_arch(arch).eval()
    rebuilt.load_state_dict(p.state_dict())  # strict: every shape fits
    x = torch.from_numpy(make_signal(1.0, seed=3))[None]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), p(x), atol=0, rtol=0)
    signal = make_signal(max(2.0, 1.2 + rebuilt.backbone.lookahead_frames * 0.03), seed=1)
    scale_head(rebuilt, signal)
    assert_stream_equals_whole(rebuilt, signal, seed=5)


def test_crnn_prunes_its_conv_and_keeps_the_gru_and_attention():
    p = randomize(recipe_pipeline("crnn"), seed=1)
    gru = p.backbone.body.gru
    hidden, inputs = gru.hidden_size, gru.gru.input_size
    p, arch = _pruned_copy(p, ratio=0.5)
    conv = p.backbone.body.conv.conv
    assert conv.out_channels == 4 and gru.gru.input_size == inputs // 2  # 8 -> 4 channels x 18 bins
    assert gru.hidden_size == hidden and p.backbone.pool.proj.in_features == hidden
    assert set(arch["pruned"]) == {"body.conv.conv", "body.gru.gru"}
    assert isinstance(p.backbone.body.gru, StreamGRU)


def test_bcresnet_subspectral_norm_keeps_its_channel_count():
    p, arch = _pruned_copy(randomize(recipe_pipeline("bcresnet1")), ratio=0.5)
    ssn = [m for m in p.backbone.modules() if isinstance(m, SubSpectralNorm)]
    assert ssn and all(m.bn.num_features == m.channels * m.sub_bands for m in ssn)
    assert any(e["attrs"].get("channels") for e in arch["pruned"].values())
    # the classifier keeps its outputs; the first conv its single input channel
    assert p.backbone.num_classes_out() == len(TINY_LABELS)
    assert p.backbone.body.stem.conv.in_channels == 1


@pytest.mark.parametrize("name,why", [("kwt1", "self-attention"), ("lambda_resnet18", "lambda"),
                                      ("sincconv_gdsconv", "channel shuffle")])
def test_models_it_cannot_prune_say_which_and_why(name, why):
    with pytest.raises(KwsError, match=f"{name}: cannot be pruned: .*{why}"):
        check_prunable(create_model(name, num_classes=2), name)


def test_sparsity_is_a_share_of_macs_and_params_follow():
    p = randomize(recipe_pipeline("dscnn_s"))
    feats = clip_features(p, SR)
    base, params = count_macs(p.backbone, feats), count_params(p.backbone)
    for s in (0.25, 0.5, 0.75):
        pruned, ratio = prune_to_macs(p.backbone, (1 - s) * base, importance_of("l1"), feats)
        got = 1 - count_macs(pruned, feats) / base
        assert s <= got < s + 0.05 and 0 < ratio < 1
        assert abs((1 - count_params(pruned) / params) - got) < 0.06
    assert count_macs(p.backbone, feats) == base  # the original is untouched


def test_round_to_keeps_widths_a_multiple():
    p = randomize(recipe_pipeline("bcresnet1"))
    feats = clip_features(p, SR)
    base = count_macs(p.backbone, feats)
    pruned, _ = prune_to_macs(p.backbone, 0.6 * base, importance_of("l1"), feats, round_to=4)
    assert count_macs(pruned, feats) <= 0.6 * base
    widths = {m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)}
    assert widths and all(w % 4 == 0 for w in widths), widths


# ---------------------------------------------------------------------------- the command

def _run(tmp_path, name: str, labels=TINY_LABELS):
    """An untrained run directory of ``name`` whose config names the tiny label set."""
    cfg = ExperimentConfig(model=ModelConfig(name), frontend=model_info(name)["frontend"])
    cfg.data.labels = labels[:4]
    cfg.train.batch_size, cfg.train.threads = 16, 1
    torch.manual_seed(0)
    p = randomize(build_pipeline(cfg, len(labels)), seed=3)
    run = tmp_path / f"run-{name}"
    save_checkpoint(run / "checkpoints" / "best.pt",
                    {"model": p.state_dict(), "config": cfg.to_dict(), "labels": list(labels),
                     "arch": arch_of(cfg, len(labels))})
    return run


@pytest.mark.parametrize("name", ["dscnn_s", "bcresnet1"])
def test_prune_run_output_reloads_as_the_pruned_model(name, tiny_data, tmp_path):
    run, out = _run(tmp_path, name), tmp_path / "pruned"
    report = prune_run(run, out, sparsity=0.5, steps=1, finetune_epochs=0, data=str(tiny_data),
                       round_to=1)
    f, b = report["final"], report["base"]
    assert 0.5 <= f["sparsity"] < 0.56 and 0.4 < 1 - f["params"] / b["params"] < 0.62
    assert json.loads((out / "prune.json").read_text())["final"] == f
    model, cfg, labels = load_model(out)
    assert labels == TINY_LABELS and cfg.model.name == name
    assert count_params(model.backbone) == f["params"]
    # the same model as pruning the run in memory
    source = load_model(run)[0]
    feats = clip_features(source, SR)
    want, _ = prune_to_macs(source.backbone, 0.5 * count_macs(source.backbone, feats),
                            importance_of("l1"), feats)
    x = torch.from_numpy(make_signal(2.0, seed=4)).reshape(2, SR)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want(source.features(x)), atol=1e-6, rtol=0)
    # kwskit info sees the smaller model
    assert cli(["info", str(out), "--no-latency", "--json"]) == 0


def test_iterative_prune_with_finetune_and_resume(tiny_data, tmp_path):
    run, out = _run(tmp_path, "dscnn_s"), tmp_path / "pruned"
    report = prune_run(run, out, sparsity=0.6, steps=2, finetune_epochs=1, importance="taylor",
                       data=str(tiny_data))
    assert [round(h["target_sparsity"], 2) for h in report["history"]] == [0.3, 0.6]
    assert all(h["sparsity"] >= h["target_sparsity"] for h in report["history"])
    assert all(h["finetuned_val_acc"] is not None for h in report["history"])
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "config.yaml", "labels.json", "metrics.json", "prune.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    assert count_params(load_model(out)[0].backbone) == report["final"]["params"]
    # --resume rebuilds the pruned model and its optimiser state from last.pt
    assert cli(["train", "--resume", str(out), "--no-mlflow"]) == 0


def test_pruned_bcresnet_exports_clip_and_stream(tmp_path):
    pytest.importorskip("onnxruntime")
    from kwskit.export.onnx import export_clip, export_stream
    from kwskit.runtime import OnnxClassifier, OnnxStreamer
    from kwskit.stream.streaming import scores_whole

    pruned, arch = _pruned_copy(randomize(recipe_pipeline("bcresnet1"), seed=2), ratio=0.5)
    model = build_from_arch(arch).eval()  # as a pruned run reloads
    model.load_state_dict(pruned.state_dict())
    scale_head(model, make_signal(2.0, seed=1))
    clip = make_signal(1.0, seed=6)[None]
    export_clip(model, TINY_LABELS, tmp_path / "clip.onnx", name="bcresnet1")
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(clip)), -1).numpy()
    np.testing.assert_allclose(OnnxClassifier(tmp_path / "clip.onnx").probs(clip), want, atol=1e-4)
    export_stream(model, TINY_LABELS, tmp_path / "s.onnx", chunk_ms=100, name="bcresnet1")
    signal = make_signal(2.0, seed=7)
    ort = OnnxStreamer(tmp_path / "s.onnx")
    got = np.concatenate([ort.step(signal[i:i + 1600]) for i in range(0, len(signal), 1600)])
    assert len(got) > 50
    np.testing.assert_allclose(got, scores_whole(model, signal)[:len(got)], atol=1e-4)


@pytest.mark.parametrize("value", ["0", "1", "-0.1", "x"])
def test_bad_sparsity_is_one_clear_error(value, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli(["prune", str(tmp_path / "nowhere"), "--sparsity", value, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("kwskit: error: --sparsity:") and err.count("\n") == 1
    assert not out.exists()


def test_unsupported_model_and_busy_out_are_refused(tmp_path, capsys):
    run = _run(tmp_path, "lambda_resnet18")
    assert cli(["prune", str(run), "--sparsity", "0.5", "--out", str(tmp_path / "o")]) == 2
    assert "lambda_resnet18: cannot be pruned" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    run = _run(tmp_path, "dscnn_s")
    assert cli(["prune", str(run), "--sparsity", "0.5", "--out", str(busy)]) == 2
    assert "choose a new or empty folder" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
