"""Pretrained models: pretrained:NAME in every command, the user's copy, the model cards, and
each shipped model (loads, matches its card, spots a synthesized keyword)."""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kwskit import pretrained  # noqa: E402
from kwskit.cli import main  # noqa: E402
from kwskit.config import load_config  # noqa: E402
from kwskit.errors import KwsError  # noqa: E402
from kwskit.models.io import load_model  # noqa: E402
from kwskit.train.loop import fit  # noqa: E402
from model_checks import NO_TORCH_PRELUDE  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

TINY = ["model.name=dscnn_s", "data.labels=[yes, no, up, down]", "train.batch_size=16",
        "optim.name=adam", "optim.lr=0.003", "optim.weight_decay=0", "schedule.name=constant",
        "train.threads=1", "train.epochs=2"]


@pytest.fixture(scope="module")
def shelf(tiny_data, tmp_path_factory):
    """A package folder holding one pretrained model made from a tiny run, as
    benchmarks/train_pretrained.py packs them (run files + streaming export + card)."""
    run = tmp_path_factory.mktemp("pre") / "run"
    fit(load_config(None, TINY), run, data=str(tiny_data), quiet=True, track=False)
    assert main(["export", str(run), "--stream"]) == 0
    home = run.parent / "shelf"
    dst = home / "tiny-dscnn"
    dst.mkdir(parents=True)
    for f in ("config.yaml", "labels.json", "metrics.json"):
        shutil.copy2(run / f, dst / f)
    for f in ("checkpoints/best.pt", "export/dscnn_s-stream.onnx"):  # shipped xz-compressed
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        (dst / f"{f}.xz").write_bytes(lzma.compress((run / f).read_bytes()))
    model, _, labels = load_model(run)
    card = {"name": "tiny-dscnn", "summary": "test model", "model": "dscnn_s", "labels": labels,
            "val_acc": 0.5, "params": sum(p.numel() for p in model.parameters()), "macs": 1,
            "bytes": 1, "license": "CC BY 4.0"}
    (dst / "card.json").write_text(json.dumps(card))
    return home


@pytest.fixture
def tiny_shelf(shelf, monkeypatch):
    monkeypatch.setattr(pretrained, "HOME", shelf)
    return shelf


def test_a_name_resolves_to_a_users_copy_that_follows_the_package(tiny_shelf, tmp_path, monkeypatch):
    monkeypatch.setenv("KWSKIT_HOME", str(tmp_path / "home"))
    assert pretrained.names() == ["tiny-dscnn"]
    run = pretrained.resolve("pretrained:tiny-dscnn")
    assert run == tmp_path / "home" / "pretrained" / "tiny-dscnn"
    for f in ("checkpoints/best.pt", "export/dscnn_s-stream.onnx"):  # unpacked in the copy
        assert (run / f).read_bytes() == lzma.decompress((tiny_shelf / "tiny-dscnn" / f"{f}.xz")
                                                         .read_bytes())
    (run / "eval").mkdir()  # what a command wrote into the copy
    stamp = (run / pretrained.STAMP).read_text()
    assert pretrained.resolve("pretrained:tiny-dscnn") == run and (run / "eval").is_dir()
    card = tiny_shelf / "tiny-dscnn" / "card.json"
    old = card.read_text()
    try:  # a new package version: the copy is refreshed, the user's files stay
        card.write_text(old.replace("test model", "test model v2"))
        pretrained.resolve("pretrained:tiny-dscnn")
        assert (run / pretrained.STAMP).read_text() != stamp and (run / "eval").is_dir()
        assert "v2" in (run / "card.json").read_text()
    finally:
        card.write_text(old)
    with pytest.raises(KwsError, match="no such pretrained model.*tiny-dscnn"):
        pretrained.resolve("pretrained:nope")


def test_commands_take_pretrained_names(tiny_shelf, tiny_data, capsys):
    assert main(["models", "--pretrained"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].split()[0] == "tiny-dscnn"
    assert main(["info", "pretrained:tiny-dscnn", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pretrained:tiny-dscnn") and "data licence:" in out and "CC BY 4.0" in out
    assert main(["eval", "pretrained:tiny-dscnn", "--data", str(tiny_data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] > 0
    assert main(["stream", "pretrained:tiny-dscnn", str(next(tiny_data.glob("yes/*.wav"))),
                 "--json"]) == 0
    assert main(["info", "pretrained:nope"]) == 2
    assert "no such pretrained model" in capsys.readouterr().err
    # nothing was written into the package folder
    assert not (tiny_shelf / "tiny-dscnn" / "eval").exists()


def test_every_run_argument_takes_a_name(tiny_shelf):
    import argparse

    args = argparse.Namespace(teacher="pretrained:tiny-dscnn", run="runs/x",
                              runs=["runs/a", "pretrained:tiny-dscnn"], data="pretrained:x")
    pretrained.resolve_args(args)
    copy = str(pretrained.resolve("pretrained:tiny-dscnn"))
    assert args.teacher == copy and args.runs == ["runs/a", copy] and args.run == "runs/x"
    assert args.data == "pretrained:x"  # only the arguments that name runs
    assert args.pretrained == {"teacher": "tiny-dscnn"}


BLOCK_TORCH = NO_TORCH_PRELUDE + """import json, os
from kwskit import pretrained
from pathlib import Path
pretrained.HOME = Path(sys.argv[1])
from kwskit.cli import main
assert main(["stream", "pretrained:tiny-dscnn", sys.argv[2], "--json"]) == 0
assert "torch" not in sys.modules
"""


def test_stream_runs_a_pretrained_model_without_torch(tiny_shelf, tiny_data, tmp_path):
    wav = next(tiny_data.glob("no/*.wav"))
    env = {**os.environ, "KWSKIT_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(tiny_shelf), str(wav)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["files"][0]["duration_s"] > 0


# ------------------------------------------------------------------ the shipped models
SHIPPED = pretrained.names()


def _said(word: str) -> np.ndarray:
    """``word`` spoken by eSpeak NG's default English voice, centred in a 1-s clip."""
    from kwskit.data.synth import Speaker, speak

    x = speak(word, Speaker(language="en-us", variant="", rate=150, pitch=50, pitch_range=50))
    clip = np.zeros(16000, np.float32)
    start = (len(clip) - len(x)) // 2
    clip[start:start + len(x)] = x
    return clip


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_matches_its_card_and_spots_a_synthesized_keyword(name):
    from kwskit.eval.evaluate import quantized_export
    from kwskit.runtime import OnnxClassifier

    card = pretrained.card(name)
    run = pretrained.resolve(f"{pretrained.PREFIX}{name}")
    model, _, labels = load_model(run)
    assert labels == card["labels"]
    assert sum(p.numel() for p in model.backbone.parameters()) == card["params"]
    files = [p for p in (pretrained.HOME / name).rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) == card["bytes"] < 500_000  # small files only
    clip = _said("yes")[None]
    int8 = quantized_export(run, "clip")  # a quantized model is scored as it ships: int8 ONNX
    if int8 is not None:
        probs = OnnxClassifier(int8).probs(clip)[0]
    else:
        with torch.no_grad():
            probs = model(torch.from_numpy(clip)).softmax(-1)[0].numpy()
    assert labels[int(probs.argmax())] == "yes", dict(zip(labels, probs.tolist()))


def test_the_package_ships_the_models_the_readme_names():
    assert {"bcresnet3", "bcresnet1", "bcresnet1-causal", "bcresnet1-int8"} <= set(SHIPPED)
